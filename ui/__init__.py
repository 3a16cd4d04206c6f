"""The browser playground: pure figure builders (``ui.figures``) for the Gradio app's tabs."""
