"""Tests of mgsv_sk.evaluation.metrics: hand-computed toys and parity with naive Python loops."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from mgsv_sk.data.spans import temporal_iou
from mgsv_sk.evaluation.metrics import (
    IOU_THRESHOLDS,
    MOR_KS,
    MOR_THRESHOLDS,
    RECALL_KS,
    grounding_report,
    grounding_report_from_iou,
    moment_recall_report,
    retrieval_ranks,
    retrieval_report,
)

# ---------------------------------------------------------------------------------------------
# naive references


def naive_ranks(
    scores: np.ndarray, gallery: list[str | int], queries: list[str | int], ties: str
) -> list[float]:
    """rank0 by a plain loop: de-duplicate by id with max, then count the others above."""
    out = []
    for row, true_id in zip(scores.tolist(), queries, strict=True):
        best: dict[str | int, float] = {}
        for gid, value in zip(gallery, row, strict=True):
            best[gid] = max(best.get(gid, -math.inf), value)
        true = best[true_id]
        greater = sum(1 for gid, v in best.items() if gid != true_id and v > true)
        tied = sum(1 for gid, v in best.items() if gid != true_id and v == true)
        out.append(
            {"pessimistic": greater + tied, "optimistic": greater}.get(ties, greater + tied / 2)
        )
    return out


def naive_retrieval_report(ranks: list[float], ks: tuple[int, ...]) -> dict[str, float]:
    n = len(ranks)
    report = {f"R@{k}": sum(1 for r in ranks if r < k) / n for k in ks}
    report["MedianR"] = statistics.median(ranks) + 1
    report["MeanR"] = sum(ranks) / n + 1
    report["MRR"] = sum(1 / (r + 1) for r in ranks) / n
    return report


def random_retrieval(
    seed: int, n: int = 120, g: int = 90, n_ids: int = 40, str_ids: bool = True
) -> tuple[np.ndarray, list[str | int], list[str | int]]:
    """Scores with many ties (1 decimal) over a gallery whose ids repeat."""
    rng = np.random.default_rng(seed)
    scores = np.round(rng.uniform(-1.0, 1.0, (n, g)), 1)
    codes = rng.integers(0, n_ids, g)
    codes[:n_ids] = np.arange(n_ids)  # every id present at least once
    rng.shuffle(codes)
    gallery = [f"7+{c}x" if str_ids else int(c) * 7 for c in codes.tolist()]
    queries = [gallery[j] for j in rng.integers(0, g, n).tolist()]
    return scores, gallery, queries


# ---------------------------------------------------------------------------------------------
# grounding


def test_grounding_report_keys_and_types() -> None:
    report = grounding_report([[0, 10]], [[0, 10]], [100])
    assert list(report) == ["mIoU", "IoU@0.3", "IoU@0.5", "IoU@0.7"]
    assert all(type(v) is float for v in report.values())
    assert report == {"mIoU": 1.0, "IoU@0.3": 1.0, "IoU@0.5": 1.0, "IoU@0.7": 1.0}
    assert IOU_THRESHOLDS == (0.3, 0.5, 0.7)


def test_grounding_report_toy() -> None:
    pred = [[0, 20], [10, 30], [-10, 10], [70, 90], [0, 40]]
    gt = [[0, 20], [20, 40], [0, 20], [40, 60], [0, 50]]
    duration = [60, 60, 60, 60, 60]
    # IoUs: 1; 10/30; (0, 10) vs (0, 20) = 0.5; past the end = 0; 40/50 = 0.8
    # mIoU = (1 + 1/3 + 0.5 + 0 + 0.8) / 5 = 2.6333.../5
    # IoU > 0.3: 1, 1/3, 0.5, 0.8 -> 4/5; > 0.5: 1, 0.8 -> 2/5 (0.5 is not > 0.5); > 0.7: 2/5
    report = grounding_report(pred, gt, duration)
    assert report["mIoU"] == pytest.approx((1 + 1 / 3 + 0.5 + 0 + 0.8) / 5, abs=1e-12)
    assert report["IoU@0.3"] == pytest.approx(4 / 5)
    assert report["IoU@0.5"] == pytest.approx(2 / 5)
    assert report["IoU@0.7"] == pytest.approx(2 / 5)


def test_grounding_threshold_is_strict() -> None:
    # IoUs exactly on the thresholds do not count
    report = grounding_report_from_iou([0.3, 0.5, 0.7, 0.7000001])
    assert report["IoU@0.3"] == 0.75  # 0.5, 0.7, 0.7000001
    assert report["IoU@0.5"] == 0.5  # 0.7, 0.7000001
    assert report["IoU@0.7"] == 0.25  # 0.7000001
    assert report["mIoU"] == pytest.approx((0.3 + 0.5 + 0.7 + 0.7000001) / 4)


def test_grounding_custom_thresholds() -> None:
    assert grounding_report_from_iou([0.1, 0.9], thresholds=(0.05, 0.95)) == {
        "mIoU": 0.5,
        "IoU@0.05": 1.0,
        "IoU@0.95": 0.0,
    }


@pytest.mark.parametrize("seed", [0, 1])
def test_grounding_report_matches_naive_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 400
    duration = rng.uniform(30, 300, n)
    gt_start = rng.uniform(0, 1, n) * duration
    gt = np.column_stack([gt_start, gt_start + rng.uniform(0, 60, n)])
    gt[:20, 1] = gt[:20, 0]  # zero-length ground truth
    center = gt.mean(axis=1) + rng.normal(0, 15, n)
    width = rng.uniform(-10, 80, n)  # some inverted
    pred = np.column_stack([center - width / 2, center + width / 2])
    pred[:30] += 300.0  # outside [0, 240] and past the track end
    report = grounding_report(pred, gt, duration)
    ious = temporal_iou(pred, gt, duration).tolist()
    assert report["mIoU"] == pytest.approx(sum(ious) / n, abs=1e-12)
    for theta in IOU_THRESHOLDS:
        assert report[f"IoU@{theta}"] == sum(1 for v in ious if v > theta) / n
    assert all(0.0 <= v <= 1.0 for v in report.values())
    assert report == grounding_report_from_iou(ious)


def test_grounding_errors() -> None:
    with pytest.raises(ValueError, match="ious is empty"):
        grounding_report_from_iou([])
    with pytest.raises(ValueError, match="ious is empty"):
        grounding_report(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0))
    with pytest.raises(ValueError, match=r"ious must lie in \[0, 1\]"):
        grounding_report_from_iou([0.5, 1.2])
    with pytest.raises(ValueError, match="NaN or inf in 1 row"):
        grounding_report_from_iou([0.5, np.nan])
    with pytest.raises(ValueError, match=r"ious must have shape \(n,\)"):
        grounding_report_from_iou([[0.5]])
    with pytest.raises(ValueError, match="pred holds NaN"):
        grounding_report([[np.nan, 1.0]], [[0, 1]], [10])


# ---------------------------------------------------------------------------------------------
# retrieval ranks


def test_tie_rules_three_tracks() -> None:
    # gallery a, b, c; query 0 (true a): b ties with a, c is below -> pess 1, opt 0, avg 0.5
    # query 1 (true c): a and b tie above c -> 2 for every rule
    # query 2 (true b): constant scorer, everything ties -> pess 2, opt 0, avg 1
    scores = [[0.5, 0.5, 0.2], [0.9, 0.9, 0.1], [0.3, 0.3, 0.3]]
    gallery = ["a", "b", "c"]
    queries = ["a", "c", "b"]
    pess = retrieval_ranks(scores, gallery, queries)
    opt = retrieval_ranks(scores, gallery, queries, ties="optimistic")
    avg = retrieval_ranks(scores, gallery, queries, ties="average")
    np.testing.assert_array_equal(pess, [1, 2, 2])
    np.testing.assert_array_equal(opt, [0, 2, 0])
    np.testing.assert_array_equal(avg, [0.5, 2.0, 1.0])
    assert pess.dtype == np.int64 and opt.dtype == np.int64 and avg.dtype == np.float64
    np.testing.assert_array_equal(pess, retrieval_ranks(scores, gallery, queries, "pessimistic"))


def test_duplicate_ids_toy() -> None:
    # columns a, b, b, c; b scores max(0.1, 0.9) = 0.9 for query 0 and counts once
    # query 0 (true a = 0.5): b 0.9 above, c 0.5 tied -> pess 2, opt 1
    # query 1 (true b = max(0.3, 0.8) = 0.8): nothing above -> 0 (b's 0.3 column is ignored)
    scores = [[0.5, 0.1, 0.9, 0.5], [0.2, 0.3, 0.8, 0.1]]
    gallery = ["a", "b", "b", "c"]
    np.testing.assert_array_equal(retrieval_ranks(scores, gallery, ["a", "b"]), [2, 0])
    np.testing.assert_array_equal(
        retrieval_ranks(scores, gallery, ["a", "b"], "optimistic"), [1, 0]
    )


def test_duplicate_columns_do_not_change_ranks() -> None:
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(50, 30))
    ids = np.arange(30) * 3
    queries = ids[rng.integers(0, 30, 50)]
    # append copies of some columns with lower scores: same ranks as without them
    extra = rng.integers(0, 30, 25)
    padded = np.concatenate([scores, scores[:, extra] - rng.uniform(0, 1, (50, 25))], axis=1)
    padded_ids = np.concatenate([ids, ids[extra]])
    perm = rng.permutation(padded.shape[1])
    for ties in ("pessimistic", "optimistic", "average"):
        np.testing.assert_array_equal(
            retrieval_ranks(padded[:, perm], padded_ids[perm], queries, ties),
            retrieval_ranks(scores, ids, queries, ties),
        )


@pytest.mark.parametrize("ties", ["pessimistic", "optimistic", "average"])
@pytest.mark.parametrize(("seed", "str_ids"), [(0, True), (1, False), (2, True)])
def test_retrieval_ranks_match_naive_loop(ties: str, seed: int, str_ids: bool) -> None:
    scores, gallery, queries = random_retrieval(seed, str_ids=str_ids)
    expected = naive_ranks(scores, gallery, queries, ties)
    out = retrieval_ranks(scores, gallery, queries, ties=ties)
    np.testing.assert_array_equal(out, expected)
    assert out.min() >= 0 and out.max() <= len(set(gallery)) - 1


def test_retrieval_ranks_float32_and_int_scores() -> None:
    scores, gallery, queries = random_retrieval(4)
    expected = retrieval_ranks(scores, gallery, queries)
    as_int = retrieval_ranks(np.round(scores * 10).astype(np.int64), gallery, queries)
    np.testing.assert_array_equal(as_int, expected)
    f32 = retrieval_ranks(scores.astype(np.float32), np.array(gallery), np.array(queries))
    np.testing.assert_array_equal(f32, expected)


def test_retrieval_ranks_ordering_of_rules() -> None:
    scores, gallery, queries = random_retrieval(5)
    pess = retrieval_ranks(scores, gallery, queries)
    opt = retrieval_ranks(scores, gallery, queries, ties="optimistic")
    avg = retrieval_ranks(scores, gallery, queries, ties="average")
    assert (opt <= avg).all() and (avg <= pess).all() and (opt < pess).any()
    np.testing.assert_array_equal(avg, (pess + opt) / 2)


def test_constant_scorer_gets_worst_rank() -> None:
    scores = np.zeros((4, 6))
    ranks = retrieval_ranks(scores, list("abcdef"), list("abcd"))
    np.testing.assert_array_equal(ranks, [5, 5, 5, 5])
    assert retrieval_report(ranks)["R@1"] == 0.0


def test_infinite_scores_are_allowed() -> None:
    # -inf for the true track ranks it below every finite score; a -inf tie is pessimistic
    scores = [[-np.inf, 0.0, -np.inf], [np.inf, 0.0, 1.0]]
    np.testing.assert_array_equal(retrieval_ranks(scores, [1, 2, 3], [1, 1]), [2, 0])


def test_retrieval_ranks_2000_by_2000() -> None:
    rng = np.random.default_rng(0)
    n = g = 2000
    scores = rng.standard_normal((n, g))
    ids = np.array([f"7+{i:05d}m" for i in range(g)])
    ranks = retrieval_ranks(scores, ids, ids[rng.permutation(g)])
    assert ranks.shape == (n,) and 0 <= ranks.min() and ranks.max() <= g - 1
    dup_ids = ids[rng.integers(0, 1200, g)]
    ranks = retrieval_ranks(scores, dup_ids, dup_ids[rng.integers(0, g, n)])
    assert ranks.max() <= len(np.unique(dup_ids)) - 1


def test_retrieval_ranks_errors() -> None:
    scores = np.zeros((2, 3))
    gallery = ["a", "b", "c"]
    with pytest.raises(ValueError, match="ties must be one of"):
        retrieval_ranks(scores, gallery, ["a", "b"], ties="random")
    with pytest.raises(ValueError, match=r"scores must have shape \(n_queries, n_gallery\)"):
        retrieval_ranks(np.zeros(3), gallery, ["a"])
    with pytest.raises(ValueError, match=r"gallery_ids must have shape \(3,\).*got shape \(2,\)"):
        retrieval_ranks(scores, ["a", "b"], ["a", "b"])
    with pytest.raises(ValueError, match=r"query_music_ids must have shape \(2,\)"):
        retrieval_ranks(scores, gallery, ["a"])
    bad = scores.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"scores holds NaN in 1 row\(s\) \(first: row 1\)"):
        retrieval_ranks(bad, gallery, ["a", "b"])
    with pytest.raises(ValueError, match=r"2 query_music_ids are not in gallery_ids.*'x', 'y'"):
        retrieval_ranks(scores, gallery, ["x", "y"])


def test_missing_ids_message_shows_at_most_five() -> None:
    queries = [f"q{i}" for i in range(8)]
    with pytest.raises(ValueError, match="8 query_music_ids are not in gallery_ids") as info:
        retrieval_ranks(np.zeros((8, 2)), ["a", "b"], queries)
    message = str(info.value)
    assert "'q4'" in message and "'q5'" not in message


def test_ids_are_compared_as_given() -> None:
    # int 7 is not the string "7": the error hints at the dtype mismatch
    with pytest.raises(ValueError, match="convert both to str"):
        retrieval_ranks(np.zeros((1, 2)), ["7", "8"], [7])
    np.testing.assert_array_equal(retrieval_ranks([[0.1, 0.2]], [7, 8], [7]), [1])


# ---------------------------------------------------------------------------------------------
# retrieval report


def test_retrieval_report_toy() -> None:
    ranks = [0, 0, 3, 7, 120]
    # R@1: ranks < 1 -> 2/5; R@5: 0, 0, 3 -> 3/5; R@10, R@25, R@50: 4/5; R@100: 4/5
    # MedianR = median(0, 0, 3, 7, 120) + 1 = 4; MeanR = 130 / 5 + 1 = 27
    # MRR = (1 + 1 + 1/4 + 1/8 + 1/121) / 5
    report = retrieval_report(ranks)
    assert list(report) == [
        "R@1",
        "R@5",
        "R@10",
        "R@25",
        "R@50",
        "R@100",
        "MedianR",
        "MeanR",
        "MRR",
    ]
    assert report["R@1"] == 2 / 5
    assert report["R@5"] == 3 / 5
    assert report["R@10"] == report["R@25"] == report["R@50"] == report["R@100"] == 4 / 5
    assert report["MedianR"] == 4.0
    assert report["MeanR"] == 27.0
    assert report["MRR"] == pytest.approx((1 + 1 + 1 / 4 + 1 / 8 + 1 / 121) / 5, abs=1e-15)
    assert all(type(v) is float for v in report.values())
    assert RECALL_KS == (1, 5, 10, 25, 50, 100)


def test_retrieval_report_even_median_and_average_ranks() -> None:
    # median(0.5, 1, 2, 3) = 1.5 -> MedianR 2.5; MeanR = 6.5 / 4 + 1 = 2.625
    report = retrieval_report(np.array([0.5, 1.0, 2.0, 3.0]), ks=(1, 2))
    assert report == {
        "R@1": 0.25,
        "R@2": 0.5,
        "MedianR": 2.5,
        "MeanR": 2.625,
        "MRR": pytest.approx((1 / 1.5 + 1 / 2 + 1 / 3 + 1 / 4) / 4),
    }


def test_k_larger_than_gallery() -> None:
    # a 3-track gallery: rank0 <= 2 < 5, so R@5 ... R@100 are all 1.0
    ranks = retrieval_ranks([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]], ["a", "b", "c"], ["a", "a"])
    report = retrieval_report(ranks)
    assert report["R@1"] == 0.5
    assert report["R@5"] == report["R@100"] == 1.0
    assert retrieval_report(ranks, ks=(1000,)) == {
        "R@1000": 1.0,
        "MedianR": 2.0,
        "MeanR": 2.0,
        "MRR": pytest.approx((1 / 3 + 1) / 2),
    }


@pytest.mark.parametrize("seed", [0, 1])
def test_retrieval_report_matches_naive_loop(seed: int) -> None:
    scores, gallery, queries = random_retrieval(seed, n=301, g=200, n_ids=150)
    for ties in ("pessimistic", "average"):
        ranks = retrieval_ranks(scores, gallery, queries, ties=ties)
        expected = naive_retrieval_report(ranks.tolist(), RECALL_KS)
        report = retrieval_report(ranks)
        assert report.keys() == expected.keys()
        for key, value in expected.items():
            assert report[key] == pytest.approx(value, abs=1e-12), key
        assert all(0.0 <= report[f"R@{k}"] <= 1.0 for k in RECALL_KS)
        assert 0.0 < report["MRR"] <= 1.0


def test_retrieval_report_errors() -> None:
    with pytest.raises(ValueError, match="ranks is empty"):
        retrieval_report([])
    with pytest.raises(ValueError, match=r"ranks must have shape \(n,\)"):
        retrieval_report([[0, 1]])
    with pytest.raises(ValueError, match="0-based ranks"):
        retrieval_report([0, -1])
    with pytest.raises(ValueError, match="0-based ranks"):
        retrieval_report([0, np.nan])
    with pytest.raises(ValueError, match="ks must be a non-empty sequence of integers >= 1"):
        retrieval_report([0, 1], ks=(0, 5))
    with pytest.raises(ValueError, match="ks must be a non-empty sequence"):
        retrieval_report([0, 1], ks=())
    with pytest.raises(ValueError, match="ks must be a non-empty sequence"):
        retrieval_report([0, 1], ks=(1.5,))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# moment recall


def test_moment_recall_keys() -> None:
    report = moment_recall_report([0], [1.0])
    assert list(report) == [
        "MoR@1,0.5",
        "MoR@1,0.7",
        "MoR@10,0.5",
        "MoR@10,0.7",
        "MoR@100,0.5",
        "MoR@100,0.7",
    ]
    assert all(v == 1.0 and type(v) is float for v in report.values())
    assert MOR_KS == (1, 10, 100) and MOR_THRESHOLDS == (0.5, 0.7)


def test_moment_recall_toy() -> None:
    ranks = [0, 0, 4, 20, 150, 0]
    ious = [0.8, 0.6, 0.9, 0.9, 0.95, 0.5]
    # k=1: rows 0, 1, 5 -> IoU > 0.5: rows 0, 1 (0.5 is not > 0.5) = 2/6; > 0.7: row 0 = 1/6
    # k=10: rows 0, 1, 2, 5 -> > 0.5: 0, 1, 2 = 3/6; > 0.7: 0, 2 = 2/6
    # k=100: adds row 3 -> > 0.5: 4/6; > 0.7: 3/6 (row 4 ranks 150, never counted)
    report = moment_recall_report(ranks, ious)
    assert report == {
        "MoR@1,0.5": 2 / 6,
        "MoR@1,0.7": 1 / 6,
        "MoR@10,0.5": 3 / 6,
        "MoR@10,0.7": 2 / 6,
        "MoR@100,0.5": 4 / 6,
        "MoR@100,0.7": 3 / 6,
    }


@pytest.mark.parametrize("seed", [0, 1])
def test_moment_recall_matches_naive_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 500
    ranks = rng.integers(0, 300, n)
    ranks[rng.random(n) < 0.2] = 0
    ious = np.round(rng.uniform(0, 1, n), 1)  # values exactly on 0.5 and 0.7
    report = moment_recall_report(ranks, ious)
    for k in MOR_KS:
        for theta in MOR_THRESHOLDS:
            hits = sum(
                1 for r, v in zip(ranks.tolist(), ious.tolist(), strict=True) if r < k and v > theta
            )
            assert report[f"MoR@{k},{theta}"] == hits / n
    # MoR@k never exceeds R@k nor IoU@theta
    recall = retrieval_report(ranks, ks=MOR_KS)
    grounding = grounding_report_from_iou(ious, thresholds=MOR_THRESHOLDS)
    for k in MOR_KS:
        for theta in MOR_THRESHOLDS:
            assert report[f"MoR@{k},{theta}"] <= min(recall[f"R@{k}"], grounding[f"IoU@{theta}"])


def test_moment_recall_custom_args() -> None:
    assert moment_recall_report([0, 3], [0.4, 0.9], ks=(5,), thresholds=(0.3,)) == {
        "MoR@5,0.3": 1.0
    }


def test_moment_recall_errors() -> None:
    with pytest.raises(ValueError, match=r"ious must have the same shape as ranks, \(2,\)"):
        moment_recall_report([0, 1], [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="ranks is empty"):
        moment_recall_report([], [])
    with pytest.raises(ValueError, match=r"ious must lie in \[0, 1\]"):
        moment_recall_report([0], [-0.1])
