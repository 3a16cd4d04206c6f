"""The beam-search tree figure (``ui.figures_beam``), on hand-made ``BeamResult`` records."""

from __future__ import annotations

import pytest

from gpt2.search import BeamResult, BeamStep, Candidate
from ui import figures_beam as fb


def cand(token: int, parent: int, lp: float, total: float, status: str, score: float | None = None) -> Candidate:
    return Candidate(token, parent, lp, total, status, score)


def small() -> tuple[BeamResult, list[list[str]]]:
    """2 beams, 3 steps, 4 candidates a step: a hypothesis finishes at step 1, the winner at step 2."""
    tree = [
        BeamStep([cand(10, 0, -0.5, -0.5, "kept"), cand(11, 0, -0.9, -0.9, "kept"),
                  cand(12, 0, -2.0, -2.0, "pruned"), cand(13, 0, -3.0, -3.0, "pruned")], kept=[0, 1]),
        BeamStep([cand(20, 0, -0.2, -0.7, "kept"), cand(50256, 1, -0.3, -1.2, "finished", -0.6),
                  cand(21, 0, -0.8, -1.3, "kept"), cand(22, 1, -1.0, -1.9, "pruned")], kept=[0, 2], finished=[1]),
        BeamStep([cand(50256, 0, -0.1, -0.8, "finished", -0.2667), cand(30, 1, -0.4, -1.7, "kept"),
                  cand(31, 0, -1.5, -2.2, "kept"), cand(32, 1, -2.0, -3.3, "pruned")], kept=[1, 2], finished=[0]),
    ]
    labels = [["A", "B", "C", "D"], ["E", "<|endoftext|>", "F", "G"], ["<|endoftext|>", "I", "J", "<b>"]]
    result = BeamResult(sequences=[[10, 20, 50256], [11, 50256]], scores=[-0.2667, -0.6], tree=tree,
                        paths=[[0, 0, 0], [1, 1]])
    return result, labels


def trace(fig, name: str):
    found = [t for t in fig.data if t.name == name]
    assert len(found) == 1, f"no single trace {name!r}: {[t.name for t in fig.data]}"
    return found[0]


def points(t) -> list[tuple[float, float]]:
    """A trace's nodes as (rank within its step, step)."""
    rank = {fb.column_x(i, 4): i for i in range(4)}
    return [(rank[x], y) for x, y in zip(t.x, t.y, strict=True)]


def test_ranks_run_left_to_right_the_worse_half_closer_together():
    xs = [fb.column_x(i, 8) for i in range(8)]
    assert xs[:4] == [0, 1, 2, 3] and xs == sorted(xs)
    assert 0 < xs[5] - xs[4] < 1 and xs[5] - xs[4] == pytest.approx(xs[7] - xs[6])


def test_pruned_candidates_are_faded_and_unlabelled_kept_ones_solid_and_labelled():
    result, labels = small()
    fig = fb.beam_tree(result, labels)
    pruned, kept = trace(fig, fb.PRUNED), trace(fig, fb.KEPT)
    assert sorted(points(pruned)) == [(2, 0), (3, 0), (3, 1), (3, 2)]
    assert pruned.opacity <= 0.5 and "text" not in pruned.mode
    assert sorted(points(kept)) == [(0, 0), (0, 1), (1, 0), (1, 2), (2, 1), (2, 2)]
    assert (kept.opacity or 1) == 1 and "text" in kept.mode
    assert dict(zip(points(kept), kept.text, strict=True))[(2, 1)] == "F"  # step 1, rank 2: token F


def test_finished_hypotheses_are_stars_with_their_normalised_score_on_hover():
    result, labels = small()
    finished = trace(fb.beam_tree(result, labels), fb.FINISHED)
    assert finished.marker.symbol == "star"
    assert sorted(points(finished)) == [(0, 2), (1, 1)]
    hover = dict(zip(points(finished), finished.hovertext, strict=True))
    assert "normalised score: -0.6000" in hover[(1, 1)] and "normalised score: -0.2667" in hover[(0, 2)]


def test_hover_tells_token_token_logprob_cumulative_logprob_and_status():
    result, labels = small()
    kept = trace(fb.beam_tree(result, labels), fb.KEPT)
    hover = dict(zip(points(kept), kept.hovertext, strict=True))[(2, 1)]  # step 1, rank 2: F
    for part in ("step 1", "token: <b>F</b> (id 21)", "token log-prob: -0.8000", "cumulative log-prob: -1.3000",
                 "status: kept"):
        assert part in hover


def test_edges_join_each_candidate_to_the_beam_it_extends():
    result, labels = small()
    fig = fb.beam_tree(result, labels)
    edges = trace(fig, "kept edges")
    x = [fb.column_x(i, 4) for i in range(4)]
    segments = {(edges.x[i + 1], edges.y[i + 1]): (edges.x[i], edges.y[i]) for i in range(0, len(edges.x), 3)}
    root = (x[3] / 2, -1)  # the prompt, above the middle
    assert segments[(x[0], 0)] == root and segments[(x[1], 0)] == root  # step 0 extends the prompt
    assert segments[(x[2], 1)] == (x[0], 0)  # F extends beam 0 = candidate 0 of step 0
    assert segments[(x[1], 2)] == (x[2], 1)  # I (parent 1) extends beam 1 of step 1 = its candidate 2 (F)


def test_the_winners_path_is_highlighted_over_the_rest():
    result, labels = small()
    fig = fb.beam_tree(result, labels)
    best, best_edges = trace(fig, fb.BEST), trace(fig, "best path edges")
    assert points(best) == [(0, 0), (0, 1), (0, 2)]
    assert best_edges.line.width > trace(fig, "kept edges").line.width
    assert best_edges.line.color == fb.BEST_COLOR
    names = [t.name for t in fig.data]
    assert names.index("best path edges") > names.index("kept edges")  # drawn on top


def test_the_step_limit_draws_only_the_steps_up_to_it():
    result, labels = small()
    full, upto = fb.beam_tree(result, labels), fb.beam_tree(result, labels, upto=1)
    ys = [y for t in upto.data if t.y is not None for y in t.y if y is not None]
    assert max(ys) == 1 and max(y for t in full.data for y in (t.y or ()) if y is not None) == 2
    assert points(trace(upto, fb.BEST)) == [(0, 0), (0, 1)]
    assert sorted(points(trace(upto, fb.FINISHED))) == [(1, 1)]
    assert "steps 0 to 1 of 3" in upto.layout.title.text and "3 steps" in full.layout.title.text
    assert upto.layout.height < full.layout.height
    # out of range: clamped to the search's steps
    assert points(trace(fb.beam_tree(result, labels, upto=99), fb.BEST)) == points(trace(full, fb.BEST))
    assert points(trace(fb.beam_tree(result, labels, upto=-5), fb.BEST)) == [(0, 0)]


def test_labels_are_escaped_and_cut_short():
    result, labels = small()
    labels[1][0] = "a_very_long_token"
    fig = fb.beam_tree(result, labels)
    kept = dict(zip(points(trace(fig, fb.KEPT)), trace(fig, fb.KEPT).text, strict=True))
    assert kept[(0, 1)] == "a_very_l…"
    pruned = dict(zip(points(trace(fig, fb.PRUNED)), trace(fig, fb.PRUNED).hovertext, strict=True))
    assert "&lt;b&gt;" in pruned[(3, 2)]  # a token "<b>" shows as text, not as markup


def test_no_result_is_a_figure_that_says_what_to_do():
    fig = fb.beam_tree(None)
    assert "Run a search" in fig.layout.annotations[0].text


def test_labels_must_match_the_tree():
    result, labels = small()
    with pytest.raises(ValueError, match="one label per candidate"):
        fb.beam_tree(result, labels[:2])


def test_four_beams_by_forty_steps_stay_labelled_one_row_per_step():
    """The size the issue names: every step gets a row tall enough for its labels, every step is ticked."""
    steps = [BeamStep([cand(i, i % 4, -1.0, -1.0 * s, "kept" if i < 4 else "pruned") for i in range(8)],
                      kept=[0, 1, 2, 3]) for s in range(40)]
    result = BeamResult([[0] * 40], [-1.0], steps, [[0] * 40])
    fig = fb.beam_tree(result, [[f"t{i}" for i in range(8)]] * 40)
    assert "text" in trace(fig, fb.KEPT).mode
    assert list(fig.layout.yaxis.tickvals) == list(range(-1, 40))
    assert 41 * 16 < fig.layout.height <= 2600
    big = BeamResult([[0] * 256], [-1.0], steps * 6 + steps[:16], [[0] * 256])  # 256 steps: rows shrink
    fig = fb.beam_tree(big, [[f"t{i}" for i in range(8)]] * 256)
    assert fig.layout.height <= 2600 and "text" not in trace(fig, fb.KEPT).mode
