"""Tests of mgsv_sk.data.spans: toy cases with hand arithmetic and parity with a naive loop."""

from __future__ import annotations

import numpy as np
import pytest

from mgsv_sk.data.spans import (
    MAX_MUSIC_SECONDS,
    MAX_MUSIC_SNIPPETS,
    MAX_VIDEO_FRAMES,
    SNIPPET_HOP_SECONDS,
    clamp_prediction,
    cw_to_se,
    ground_truth_span,
    se_to_cw,
    span_lengths,
    temporal_iou,
)


def naive_iou(pred: list[float], gt: list[float], duration: float) -> float:
    """The protocol's per-sample IoU written as a plain Python loop body."""
    start = max(pred[0], 0.0)
    end = min(min(pred[1], 240.0), duration)
    gt_start, gt_end = gt[0], min(gt[1], 240.0)
    if gt_end <= gt_start:
        return 0.0
    inter = max(0.0, min(end, gt_end) - max(start, gt_start))
    union = max(end - start, 0.0) + (gt_end - gt_start) - inter
    return inter / union if union > 0 else 0.0


def random_case(seed: int, n: int = 600) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded predictions, ground truths and durations covering the protocol's edge cases."""
    rng = np.random.default_rng(seed)
    duration = np.round(rng.uniform(30.0, 300.0, n))
    gt_start = np.round(rng.uniform(0.0, 1.0, n) * duration)
    gt_len = np.round(rng.uniform(0.0, 50.0, n))
    gt_len[rng.random(n) < 0.1] = 0.0  # zero-length ground truth
    gt = np.column_stack([gt_start, gt_start + gt_len])  # some end past 240 s
    # half wild: outside [0, 240], past the track end, negative widths (inverted)
    center = rng.uniform(-0.3, 1.4, n) * 240.0
    width = rng.uniform(-0.1, 0.3, n) * 240.0
    # half near the ground truth, so that partial overlaps are common
    near = rng.random(n) < 0.5
    center[near] = gt[near].mean(axis=1) + rng.normal(0.0, 8.0, near.sum())
    width[near] = gt_len[near] + rng.normal(0.0, 8.0, near.sum())
    pred = np.round(np.column_stack([center - width / 2, center + width / 2]))  # touching ends
    exact = rng.random(n) < 0.05
    pred[exact] = gt[exact]  # some perfect hits
    return pred, gt, duration


def test_constants() -> None:
    assert MAX_MUSIC_SECONDS == 240.0
    assert SNIPPET_HOP_SECONDS == 2.5
    assert MAX_VIDEO_FRAMES == 50
    assert MAX_MUSIC_SNIPPETS == 96
    assert MAX_MUSIC_SECONDS / SNIPPET_HOP_SECONDS == MAX_MUSIC_SNIPPETS


def test_cw_to_se_toy() -> None:
    # (0.5 -+ 0.125) * 240 = (90, 150); (0.1 -+ 0) * 240 = (24, 24)
    out = cw_to_se([[0.5, 0.25], [0.1, 0.0]])
    np.testing.assert_allclose(out, [[90.0, 150.0], [24.0, 24.0]])
    assert out.dtype == np.float64
    # a custom scale: (1 -+ 0.5) * 10 = (5, 15)
    np.testing.assert_allclose(cw_to_se([[1.0, 1.0]], scale=10.0), [[5.0, 15.0]])


def test_se_to_cw_toy() -> None:
    # ((0 + 24) / 2, 24 - 0) / 240 = (0.05, 0.1)
    np.testing.assert_allclose(se_to_cw([[0, 24]]), [[0.05, 0.1]])


def test_round_trip() -> None:
    rng = np.random.default_rng(0)
    cw = rng.uniform(-0.5, 1.5, (200, 2))
    np.testing.assert_allclose(se_to_cw(cw_to_se(cw)), cw, atol=1e-12)
    se = rng.uniform(-100, 400, (200, 2))
    np.testing.assert_allclose(cw_to_se(se_to_cw(se)), se, atol=1e-9)
    np.testing.assert_allclose(cw_to_se(se_to_cw(se, scale=7.0), scale=7.0), se, atol=1e-9)


def test_span_lengths() -> None:
    # 25 - 10 = 15; inverted (30, 20) has length 0; empty (5, 5) has length 0
    np.testing.assert_array_equal(span_lengths([[10, 25], [30, 20], [5, 5]]), [15.0, 0.0, 0.0])


def test_clamp_prediction_toy() -> None:
    pred = np.array([[-5.0, 30.0], [200.0, 260.0], [130.0, 150.0], [10.0, 20.0]])
    before = pred.copy()
    out = clamp_prediction(pred, [100.0, 250.0, 120.0, 300.0])
    # start >= 0; end <= 240 then <= duration; the third row ends up inverted (130, 120)
    np.testing.assert_array_equal(out, [[0.0, 30.0], [200.0, 240.0], [130.0, 120.0], [10.0, 20.0]])
    np.testing.assert_array_equal(pred, before)  # inputs untouched
    assert out is not pred


def test_clamp_prediction_scalar_duration() -> None:
    np.testing.assert_array_equal(clamp_prediction([[-1, 80], [10, 20]], 60), [[0, 60], [10, 20]])


def test_ground_truth_span_toy() -> None:
    gt = np.array([[10.0, 30.0], [230.0, 255.0], [245.0, 250.0]])
    out = ground_truth_span(gt)
    # only the end is cut at 240; (245, 240) is empty
    np.testing.assert_array_equal(out, [[10.0, 30.0], [230.0, 240.0], [245.0, 240.0]])
    assert gt[1, 1] == 255.0


@pytest.mark.parametrize(
    ("pred", "gt", "duration", "expected"),
    [
        ([0, 20], [0, 20], 60, 1.0),  # identical
        ([10, 30], [20, 40], 60, 10 / 30),  # inter 10, union 20 + 20 - 10 = 30
        ([-10, 10], [0, 20], 60, 10 / 20),  # pred clamped to (0, 10): inter 10, union 20
        ([70, 90], [40, 60], 60, 0.0),  # past the track end: clamped to (70, 60), length 0
        ([40, 90], [40, 60], 50, 10 / 20),  # end cut to 50: inter 10, union 10 + 20 - 10
        ([230, 250], [220, 260], 300, 10 / 20),  # pred (230, 240), gt (220, 240): 10 / 20
        ([10, 20], [15, 15], 60, 0.0),  # zero-length ground truth
        ([250, 260], [245, 250], 300, 0.0),  # gt starts after 240 s: empty after the cut
        ([30, 10], [0, 40], 60, 0.0),  # inverted prediction: length 0, no intersection
        ([20, 30], [30, 40], 60, 0.0),  # touching spans
        ([0, 60], [10, 20], 60, 10 / 60),  # pred covers gt: inter 10, union 60
    ],
)
def test_temporal_iou_toy(
    pred: list[float], gt: list[float], duration: float, expected: float
) -> None:
    out = temporal_iou([pred], [gt], [duration])
    assert out.shape == (1,)
    assert out[0] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_temporal_iou_matches_naive_loop(seed: int) -> None:
    pred, gt, duration = random_case(seed)
    expected = [
        naive_iou(list(p), list(g), float(d)) for p, g, d in zip(pred, gt, duration, strict=True)
    ]
    out = temporal_iou(pred, gt, duration)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)
    assert ((out >= 0) & (out <= 1)).all()
    # the random case must exercise the edge cases it claims to
    assert 0.1 < (out == 0).mean() < 0.9
    assert (out == 1).any() and ((out > 0) & (out < 1)).mean() > 0.2


def test_temporal_iou_accepts_lists_and_ints() -> None:
    out = temporal_iou([[0, 10]], [[5, 15]], [100])
    assert out.dtype == np.float64
    assert out[0] == pytest.approx(5 / 15)


def test_temporal_iou_empty_rows() -> None:
    assert temporal_iou(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0)).shape == (0,)


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match=r"pred must have shape \(n, 2\).*got shape \(3,\)"):
        temporal_iou([1, 2, 3], [[0, 1]], [10])
    with pytest.raises(ValueError, match=r"gt must have shape \(n, 2\).*got shape \(1, 3\)"):
        temporal_iou([[0, 1]], [[0, 1, 2]], [10])
    with pytest.raises(ValueError, match=r"gt must have the same shape as pred, \(1, 2\)"):
        temporal_iou([[0, 1]], [[0, 1], [2, 3]], [10])
    with pytest.raises(ValueError, match=r"duration must have shape \(2,\).*got shape \(3,\)"):
        temporal_iou([[0, 1], [2, 3]], [[0, 1], [2, 3]], [10, 10, 10])
    with pytest.raises(ValueError, match=r"cw must have shape \(n, 2\)"):
        cw_to_se(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match=r"se must have shape \(n, 2\)"):
        se_to_cw([0.1, 0.2])


def test_non_finite_errors() -> None:
    good = np.array([[0.0, 10.0], [5.0, 15.0], [1.0, 2.0]])
    bad = good.copy()
    bad[1, 0] = np.nan
    bad[2, 1] = np.inf
    with pytest.raises(ValueError, match=r"pred holds NaN or inf values in 2 row\(s\)"):
        temporal_iou(bad, good, [20, 20, 20])
    with pytest.raises(ValueError, match=r"gt holds NaN or inf values in 2 row\(s\)"):
        temporal_iou(good, bad, [20, 20, 20])
    with pytest.raises(ValueError, match=r"duration holds NaN or inf values in 1 row"):
        temporal_iou(good, good, [20, np.nan, 20])


def test_negative_duration_error() -> None:
    with pytest.raises(ValueError, match="duration must be >= 0"):
        clamp_prediction([[0, 1]], [-3.0])
