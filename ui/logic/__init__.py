"""Tab logic: plain functions of plain values (ids, numbers, records, settings) returning records,
figures and ``ui.updates.Update``s. Nothing here imports Gradio; ``ui.layout`` wires it to widgets."""
