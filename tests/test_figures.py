"""Figure builders (ui/figures.py): checked on their plotly records, no browser needed."""

from __future__ import annotations

import json
import math

import numpy as np
import plotly.graph_objects as go
import pytest

import gpt2
from gpt2.inspection import attention_maps
from ui import figures

LABELS = ["The", "␣cat", "␣sat", "␣on", "␣the", "␣cat", "↵"]  # "␣cat" twice: must stay two columns
T = len(LABELS)


def random_patterns(*lead: int, t: int = T, seed: int = 0) -> np.ndarray:
    """Causal attention-like patterns: rows sum to 1 over keys 0..query."""
    rng = np.random.default_rng(seed)
    raw = rng.random((*lead, t, t)) * np.tril(np.ones((t, t)))
    return (raw / raw.sum(-1, keepdims=True)).astype(np.float32)


def stage_probs(k: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {stage: rng.dirichlet(np.ones(k)) for stage in gpt2.sampling.STAGES}


def lens_record(n_layer: int = 3, t: int = T) -> tuple[list[list[str]], np.ndarray]:
    top_labels = [[f"l{layer}t{i}" for i in range(t)] for layer in range(n_layer + 1)]
    return top_labels, np.random.default_rng(2).random((n_layer + 1, t))


ALL_FIGURES = {
    "attention_heatmap": lambda: figures.attention_heatmap(random_patterns(), LABELS, "L0 H0"),
    "attention_grid": lambda: figures.attention_grid(random_patterns(3), LABELS, layer=1),
    "token_focus": lambda: figures.token_focus(random_patterns(2, 3), LABELS, query=4),
    "candidates_bar": lambda: figures.candidates_bar(["a", "b", "c", "d", "e"], stage_probs(), chosen=2),
    "surprisal_chart": lambda: figures.surprisal_chart(LABELS, np.arange(T) / 2, np.ones(T)),
    "logit_lens_heatmap": lambda: figures.logit_lens_heatmap(LABELS, *lens_record()),
    "loss_curve": lambda: figures.loss_curve([0, 10, 20], [4.0, 3.0, 2.5], [0, 20], [4.1, 2.7], [0.1, 0.3]),
}

EMPTY_FIGURES = {
    "attention_heatmap": lambda: figures.attention_heatmap(np.zeros((0, 0)), []),
    "attention_grid": lambda: figures.attention_grid(np.zeros((4, 0, 0)), [], layer=0),
    "token_focus": lambda: figures.token_focus(np.zeros((2, 4, 0, 0)), [], query=0),
    "candidates_bar": lambda: figures.candidates_bar([], {"raw": np.zeros(0)}, chosen=None),
    "surprisal_chart": lambda: figures.surprisal_chart([], np.zeros(0), np.zeros(0)),
    "logit_lens_heatmap": lambda: figures.logit_lens_heatmap([], [[], []], np.zeros((2, 0))),
    "loss_curve": lambda: figures.loss_curve([], [], [], []),
}


def axis_names(fig: go.Figure, axis: str = "x") -> list[str]:
    return list(getattr(fig.data[0], axis))


# ---- shared look ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_FIGURES)
def test_theme_neutral_and_serialisable(name):
    fig = ALL_FIGURES[name]()
    assert isinstance(fig, go.Figure) and fig.data
    assert fig.layout.paper_bgcolor == fig.layout.plot_bgcolor == "rgba(0,0,0,0)"
    assert fig.layout.font.color == figures._GREY
    for axis in [*fig.select_xaxes(), *fig.select_yaxes()]:
        assert axis.gridcolor == figures._GRID
    json.loads(fig.to_json())  # what gr.Plot sends to the browser


@pytest.mark.parametrize("name", EMPTY_FIGURES)
def test_no_tokens_gives_an_empty_figure_that_says_so(name):
    fig = EMPTY_FIGURES[name]()
    assert not fig.data
    assert fig.layout.paper_bgcolor == "rgba(0,0,0,0)"
    assert fig.layout.annotations and fig.layout.annotations[0].text.startswith("No ")
    fig.to_json()


@pytest.mark.parametrize("name", ["attention_heatmap", "token_focus"])
def test_repeated_tokens_stay_distinct_on_the_axis(name):
    fig = ALL_FIGURES[name]()
    names = axis_names(fig)
    assert len(set(names)) == len(names)  # plotly would merge equal category names
    assert "1:␣cat" in names and ("5:␣cat" in names or name == "token_focus")
    assert fig.layout.xaxis.type == "category"  # so "3:2023"-like names are never read as numbers or dates


def test_token_markup_is_escaped_in_labels():
    labels = ["<b>", "&", "x"]
    fig = figures.attention_heatmap(random_patterns(t=3), labels)
    assert axis_names(fig) == ["0:&lt;b&gt;", "1:&amp;", "2:x"]  # plotly decodes entities when drawing


@pytest.mark.parametrize("build", [
    lambda t: figures.attention_heatmap(random_patterns(t=t), ["a"] * t),
    lambda t: figures.token_focus(random_patterns(t // 2, 2, t=3), ["a"] * 3, query=2),  # t rows of layer, head
])
def test_attention_figures_grow_to_label_every_row_in_a_readable_font(build):
    sizes = {t: build(t) for t in (8, 40, 89, 96, 300)}
    for fig in sizes.values():
        assert fig.layout.xaxis.tickfont.size == fig.layout.yaxis.tickfont.size >= 11
    heights = [fig.layout.height for fig in sizes.values()]
    assert heights == sorted(heights) and heights[-1] == heights[-2]  # capped past _EVERY_TOKEN rows
    for t in (40, 89, 96):  # plotly labels every category row that has round(1.2 × font size) pixels
        plot_px = sizes[t].layout.height - figures._ATTN_CHROME_PX
        assert plot_px >= t * round(1.2 * figures._TOKEN_FONT)
    assert sizes[8].layout.height >= 500  # a few tokens: still a square-ish plot at phone width


# ---- attention -------------------------------------------------------------------------------------


def test_attention_heatmap_shows_the_pattern_queries_top_down():
    pattern = random_patterns()
    fig = figures.attention_heatmap(pattern, LABELS, title="L2 H5")
    (trace,) = fig.data
    assert trace.type == "heatmap"
    np.testing.assert_array_equal(trace.z, pattern)
    assert axis_names(fig, "y") == axis_names(fig, "x") == [f"{i}:{label}" for i, label in enumerate(LABELS)]
    assert fig.layout.yaxis.autorange == "reversed"  # query 0 on the top row
    assert "query" in fig.layout.yaxis.title.text and "key" in fig.layout.xaxis.title.text
    assert trace.hovertemplate.startswith("%{y} → %{x}: %{z")  # query token → key token: weight
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (0, 1)
    assert fig.layout.title.text == "L2 H5"


@pytest.mark.parametrize("name", ["attention_heatmap", "attention_grid", "token_focus"])
def test_attention_colours_fitted_to_the_data_or_zero_to_one_with_the_bar_below(name):
    t, labels = 30, [f"t{i}" for i in range(30)]  # long enough that the first queries' weights near 1 are rare
    build = {"attention_heatmap": lambda **kw: figures.attention_heatmap(random_patterns(t=t), labels, **kw),
             "attention_grid": lambda **kw: figures.attention_grid(random_patterns(3, t=t), labels, layer=0, **kw),
             "token_focus": lambda **kw: figures.token_focus(random_patterns(2, 3, t=t), labels, query=t - 1, **kw),
             }[name]
    fig = build(zmax=None)  # fitted: 0 to the 99th percentile of the weights (a causal map's zeros left out)
    weights = np.concatenate([np.ravel(trace.z) for trace in fig.data])
    top = np.quantile(weights[weights > 0], 0.99)
    assert fig.layout.coloraxis.cmin == 0 and fig.layout.coloraxis.cmax == pytest.approx(top) and top < 1
    assert f"0 to {top:.2g}+" in fig.layout.coloraxis.colorbar.title.text  # the bar says it was fitted, to what
    assert build().layout.coloraxis.cmax == build(zmax=1).layout.coloraxis.cmax == 1
    bar = fig.layout.coloraxis.colorbar
    assert (bar.orientation, bar.yref, bar.y, bar.yanchor) == ("h", "container", 0, "bottom")  # under the plot
    assert fig.layout.margin.b >= 60  # room for it


def test_attention_positions_start_at_first():
    heat = figures.attention_heatmap(random_patterns(), LABELS, first=40)
    assert axis_names(heat)[:2] == axis_names(heat, "y")[:2] == ["40:The", "41:␣cat"]
    grid = figures.attention_grid(random_patterns(2), LABELS, layer=0, first=40)
    assert all(list(trace.y)[-1] == f"{40 + T - 1}:↵" for trace in grid.data)
    focus = figures.token_focus(random_patterns(1, 2), LABELS, query=4, first=40)
    assert axis_names(focus)[-1] == "44:␣the" and "44:␣the" in focus.layout.title.text


def test_attention_heatmap_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="len\\(labels\\) = 6"):
        figures.attention_heatmap(random_patterns(), LABELS[:-1])
    with pytest.raises(ValueError, match="shape"):
        figures.attention_heatmap(random_patterns(2), LABELS)


@pytest.mark.parametrize("n_head", [1, 4, 6, 12])
def test_attention_grid_has_one_panel_per_head(n_head):
    patterns = random_patterns(n_head)
    fig = figures.attention_grid(patterns, LABELS, layer=3)
    assert len(fig.data) == n_head
    assert [a.text for a in fig.layout.annotations] == [f"head {h}" for h in range(n_head)]
    assert len({(t.xaxis, t.yaxis) for t in fig.data}) == n_head  # each head in its own panel
    assert len(list(fig.select_xaxes())) == len(list(fig.select_yaxes())) == -(-n_head // 4) * min(4, n_head)
    for h, trace in enumerate(fig.data):
        np.testing.assert_array_equal(trace.z, patterns[h])
        assert trace.coloraxis == "coloraxis"  # one shared scale
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (0, 1)
    assert all(axis.autorange == "reversed" for axis in fig.select_yaxes())
    assert "Layer 3" in fig.layout.title.text


def test_attention_grid_drops_tick_labels_only_on_long_texts():
    short = figures.attention_grid(random_patterns(2), LABELS, layer=0)
    long = figures.attention_grid(random_patterns(2, t=40), [f"t{i}" for i in range(40)], layer=0)
    assert all(axis.showticklabels for axis in short.select_xaxes())
    assert not any(axis.showticklabels for axis in [*long.select_xaxes(), *long.select_yaxes()])


def test_token_focus_rows_are_layer_heads_and_columns_keys_up_to_the_query():
    n_layer, n_head, query = 3, 4, 4
    patterns = random_patterns(n_layer, n_head)
    fig = figures.token_focus(patterns, LABELS, query)
    (trace,) = fig.data
    assert np.shape(trace.z) == (n_layer * n_head, query + 1)
    np.testing.assert_array_equal(trace.z, patterns[:, :, query, : query + 1].reshape(-1, query + 1))
    assert list(trace.y) == [f"L{layer} H{head}" for layer in range(n_layer) for head in range(n_head)]
    assert list(trace.x) == [f"{i}:{label}" for i, label in enumerate(LABELS[: query + 1])]
    assert trace.z[n_head + 2][1] == patterns[1, 2, query, 1]  # row "L1 H2"
    assert fig.layout.yaxis.autorange == "reversed"
    assert "4:␣the" in fig.layout.title.text


@pytest.mark.parametrize("query", [-1, T])
def test_token_focus_rejects_a_query_outside_the_text(query):
    with pytest.raises(ValueError, match="query"):
        figures.token_focus(random_patterns(1, 1), LABELS, query)


def test_attention_figures_from_a_real_model():
    model = gpt2.GPT2(gpt2.GPTConfig.preset("tiny")).eval()
    maps = attention_maps(model, gpt2.encode("the cat and the cat"))
    config = model.config
    grid = figures.attention_grid(maps.patterns[0], maps.labels, layer=maps.layers[0])
    assert len(grid.data) == config.n_head
    focus = figures.token_focus(maps.patterns, maps.labels, query=len(maps.labels) - 1)
    assert np.shape(focus.data[0].z) == (config.n_layer * config.n_head, len(maps.labels))
    np.testing.assert_allclose(np.sum(focus.data[0].z, axis=1), 1, rtol=1e-5)  # each head's row is a distribution
    assert len(set(focus.data[0].x)) == len(maps.labels)  # "␣the", "␣cat" repeat in the text


# ---- sampling ------------------------------------------------------------------------------------


@pytest.mark.parametrize("chosen", [0, 3, None])
def test_candidates_bar_one_bar_per_stage_and_the_chosen_marked(chosen):
    labels = ["␣the", "␣a", "␣the", "␣an", "↵"]  # equal labels (different ids) must not merge
    probs = stage_probs(len(labels))
    fig = figures.candidates_bar(labels, probs, chosen)
    assert [t.name for t in fig.data] == list(gpt2.sampling.STAGES)
    for trace, stage in zip(fig.data, probs, strict=True):
        assert trace.type == "bar" and trace.orientation == "h"
        np.testing.assert_array_equal(trace.x, probs[stage])
        assert list(trace.y) == list(fig.data[0].y)
    names = list(fig.data[0].y)
    assert len(set(names)) == len(labels)
    marked = [i for i, name in enumerate(names) if "▶" in name]
    assert marked == ([] if chosen is None else [chosen])
    if chosen is not None:
        assert names[chosen].startswith("<b>") and labels[chosen] in names[chosen]
    assert "1. ␣the" in names[0] and fig.layout.yaxis.autorange == "reversed"  # most likely on top
    assert fig.layout.barmode == "group"
    assert_legend_below(fig)


def assert_legend_below(fig: go.Figure) -> None:
    """Beside the plot a legend squeezed it to ~90 px on a phone; below, the plot keeps the full width."""
    assert fig.layout.legend.orientation == "h" and fig.layout.legend.y < 0 and fig.layout.legend.yanchor == "top"


def test_candidates_bar_stages_off_stay_in_the_legend_without_bars():
    """Ten stages of bars are unreadable: a stage that is off keeps its place in the legend (in order,
    marked "off", a click shows it) but draws no bar and takes no height; the others say how many tokens
    they keep."""
    labels = ["a", "b", "c"]
    probs = stage_probs(len(labels))
    off = ["repetition penalty", "no-repeat n-gram", "top-p", "min-p", "typical", "epsilon", "eta"]
    kept = {stage: 100 - i for i, stage in enumerate(gpt2.sampling.STAGES)}
    fig = figures.candidates_bar(labels, probs, 0, kept=kept, off=off)
    assert [t.name.split(" ")[0] for t in fig.data] == [s.split(" ")[0] for s in gpt2.sampling.STAGES]
    for trace, stage in zip(fig.data, gpt2.sampling.STAGES, strict=True):
        if stage in off:
            assert trace.visible == "legendonly" and trace.name == f"{stage} (off)"
        else:
            assert trace.visible is True and trace.name == f"{stage} · {kept[stage]:,} kept"
    every = figures.candidates_bar(labels * 4, stage_probs(12), 0)
    fewer = figures.candidates_bar(labels * 4, stage_probs(12), 0, off=off)
    assert fewer.layout.height < every.layout.height  # rows sized for the bars shown


def test_candidates_bar_rejects_bad_input():
    with pytest.raises(ValueError, match="chosen"):
        figures.candidates_bar(["a", "b"], {"raw": np.array([0.6, 0.4])}, chosen=2)
    with pytest.raises(ValueError, match="top-k"):
        figures.candidates_bar(["a", "b"], {"raw": np.array([0.6, 0.4]), "top-k": np.array([1.0])}, chosen=0)
    with pytest.raises(ValueError, match="at least one stage"):
        figures.candidates_bar(["a", "b"], {}, chosen=0)


# ---- scores ----------------------------------------------------------------------------------------


def test_surprisal_chart_bars_and_entropy_over_token_rows_in_nats():
    surprisal, entropy = np.linspace(0, 5, T), np.linspace(3, 1, T)
    fig = figures.surprisal_chart(LABELS, surprisal, entropy)
    assert [(t.type, t.name) for t in fig.data] == [("bar", "surprisal −ln p"), ("scatter", "entropy")]
    np.testing.assert_array_equal(fig.data[0].x, surprisal)
    np.testing.assert_array_equal(fig.data[1].x, entropy)
    assert list(fig.data[1].y) == list(fig.data[0].y) == [f"{i}:{label}" for i, label in enumerate(LABELS)]
    assert fig.data[0].orientation == "h" and "nats" in fig.layout.xaxis.title.text
    assert_legend_below(fig)
    with pytest.raises(ValueError, match="entropy"):
        figures.surprisal_chart(LABELS, surprisal, entropy[:-1])


@pytest.mark.parametrize("name", ["surprisal_chart", "logit_lens_heatmap"])
def test_token_rows_are_distinct_readable_and_read_top_down(name):
    fig = ALL_FIGURES[name]()
    names = list(fig.data[0].y)
    assert len(set(names)) == len(names) and "1:␣cat" in names and "5:␣cat" in names  # never merged
    axis = fig.layout.yaxis
    assert axis.type == "category" and axis.autorange == "reversed"  # the first token on top, as in the text
    assert axis.tickfont.size >= 11 and not axis.tickangle  # horizontal labels a phone can read


@pytest.mark.parametrize("n", [7, 64, 100])
def test_every_token_gets_a_row_tall_enough_for_its_label(n):
    fig = figures.surprisal_chart([f"t{i}" for i in range(n)], np.ones(n), np.ones(n))
    assert fig.layout.height >= n * 1.5 * fig.layout.yaxis.tickfont.size


@pytest.mark.parametrize(("rank", "bucket"), [
    (1, "top-10"), (10, "top-10"), (11, "top-100"), (100, "top-100"), (101, "top-1000"),
    (1000, "top-1000"), (1001, "beyond"), (50257, "beyond"),
])
def test_gltr_bucket_boundaries(rank, bucket):
    assert figures.gltr_highlights(["␣x"], np.array([rank])) == [("␣x", bucket)]


def test_gltr_highlights_pair_texts_with_buckets_and_colors():
    texts = ["The", " cat", "\n", " sat"]
    out = figures.gltr_highlights(texts, np.array([3, 57, 900, 4000]))
    assert out == [("The", "top-10"), (" cat", "top-100"), ("\n", "top-1000"), (" sat", "beyond")]
    assert set(figures.GLTR_COLORS) == {"top-10", "top-100", "top-1000", "beyond"}
    assert figures.gltr_highlights([], np.zeros(0)) == []
    with pytest.raises(ValueError, match="1-based"):
        figures.gltr_highlights(["a"], np.array([0]))
    with pytest.raises(ValueError, match="ranks"):
        figures.gltr_highlights(["a", "b"], np.array([1]))


def test_logit_lens_rows_are_tokens_and_columns_layers_with_the_last_on_the_right():
    top_labels, top_probs = lens_record(n_layer=3)
    fig = figures.logit_lens_heatmap(LABELS, top_labels, top_probs)
    heat, cells = fig.data
    np.testing.assert_array_equal(heat.z, top_probs.T)
    assert list(heat.x) == ["embed", "L0", "L1", "L2"]
    assert [list(row) for row in heat.text] == [list(col) for col in zip(*top_labels, strict=True)]
    assert "%{text}" in heat.hovertemplate
    # few cells: their labels drawn in them, one text point per cell, in the cell's row and column
    assert cells.mode == "text" and cells.hoverinfo == "skip"
    row_1_column_2 = list(zip(cells.x, cells.y, cells.text, strict=True))[1 * 4 + 2]
    assert row_1_column_2 == ("L1", heat.y[1], top_labels[2][1])


def test_logit_lens_positions_are_the_texts():
    """The lens reads the last tokens of a text: its rows carry their positions in the whole text."""
    top_labels, top_probs = lens_record()
    fig = figures.logit_lens_heatmap(LABELS, top_labels, top_probs, first=40)
    assert list(fig.data[0].y) == [f"{40 + i}:{label}" for i, label in enumerate(LABELS)]


def test_logit_lens_cell_text_is_dark_on_light_cells_and_white_on_dark_ones():
    top_labels = [["a", "b", "c"]] * 2
    probs = np.array([[0.0, 0.5, 1.0], [1.0, 0.9, 0.05]])  # Viridis: purple, teal, yellow...
    cells = figures.logit_lens_heatmap(["x", "y", "z"], top_labels, probs).data[1]
    colors = dict(zip(zip(cells.y, cells.x, strict=True), cells.textfont.color, strict=True))
    assert colors["0:x", "embed"] == "#ffffff" and colors["2:z", "embed"] == "#111111"  # purple, yellow
    assert colors["2:z", "L0"] == "#ffffff" and colors["0:x", "L0"] == "#111111"
    assert figures._luminance("rgb(253, 231, 37)") > 0.179 > figures._luminance("rgb(68, 1, 84)")


def test_logit_lens_long_text_or_many_layers_keep_labels_in_hover_only():
    for n, n_layer in ((200, 12), (20, 12)):
        top_labels, top_probs = lens_record(n_layer=n_layer, t=n)
        fig = figures.logit_lens_heatmap([f"t{i}" for i in range(n)], top_labels, top_probs)
        assert len(fig.data) == 1 and "%{text}" in fig.data[0].hovertemplate


def test_logit_lens_rejects_ragged_records():
    top_labels, top_probs = lens_record()
    with pytest.raises(ValueError, match="top_labels"):
        figures.logit_lens_heatmap(LABELS, top_labels[:-1], top_probs)
    with pytest.raises(ValueError, match="top_probs"):
        figures.logit_lens_heatmap(LABELS[:-1], top_labels, top_probs)


# ---- training ------------------------------------------------------------------------------------


def test_loss_curve_train_line_and_validation_markers():
    fig = figures.loss_curve([0, 10, 20, 30], [4.0, 3.2, 2.9, 2.7], [0, 30], [4.1, 2.8])
    train, val = fig.data
    assert (train.name, train.mode, list(train.x), list(train.y)) == ("train", "lines", [0, 10, 20, 30],
                                                                      [4.0, 3.2, 2.9, 2.7])
    assert (val.name, list(val.x), list(val.y)) == ("validation", [0, 30], [4.1, 2.8])
    assert "markers" in val.mode
    assert fig.layout.xaxis.title.text == "step" and "nats/token" in fig.layout.yaxis.title.text
    assert len(figures.loss_curve([0, 1], [3.0, 2.0], [], []).data) == 1  # no validation yet
    with pytest.raises(ValueError, match="val_loss"):
        figures.loss_curve([0], [3.0], [0, 5], [3.1])


def test_loss_curve_validation_accuracy_on_a_right_axis_and_perplexity_in_the_hover():
    fig = figures.loss_curve([0, 10, 20, 30], [4.0, 3.2, 2.9, 2.7], [0, 30], [math.log(50.0), 2.0], [0.125, 0.5])
    train, val, acc = fig.data
    assert (acc.name, acc.yaxis, list(acc.x), list(acc.y)) == ("validation accuracy", "y2", [0, 30], [0.125, 0.5])
    assert train.yaxis in (None, "y") and val.yaxis in (None, "y")  # losses stay on the left axis
    axis = fig.layout.yaxis2
    assert (axis.overlaying, axis.side, tuple(axis.range), axis.tickformat) == ("y", "right", (0, 1), ".0%")
    assert fig.layout.yaxis.title.text == "loss (nats/token)" and axis.title.text == "accuracy"
    assert list(val.customdata) == pytest.approx([50.0, math.exp(2.0)]) and "perplexity" in val.hovertemplate
    assert "%" in acc.hovertemplate
    assert math.isinf(figures.loss_curve([1], [3.0], [1], [1e4], [0.0]).data[1].customdata[0])  # no overflow error
    with pytest.raises(ValueError, match="val_accuracy"):
        figures.loss_curve([0], [3.0], [0], [3.1], [0.1, 0.2])
