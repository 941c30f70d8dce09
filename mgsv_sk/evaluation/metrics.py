"""Metrics of the MGSV evaluation protocol as pure numpy functions.

Three tasks (``MGSV.md`` section 4):

- single-music grounding (SmG): `grounding_report` (mIoU, IoU@0.3/0.5/0.7);
- video-to-music retrieval (V2MR): `retrieval_ranks` then `retrieval_report`
  (R@1/5/10/25/50/100, MedianR, MeanR, MRR);
- music-set grounding (MsG): `moment_recall_report` (MoR@k at IoU > θ).

Every rate is a fraction in ``[0, 1]`` (the paper prints percentages). Each function returns
plain Python floats, never rounded. Empty inputs raise ``ValueError``: a mean over nothing has
no meaning.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from mgsv_sk.data.spans import temporal_iou
from mgsv_sk.errors import InvalidInputError

__all__ = [
    "IOU_THRESHOLDS",
    "MOR_KS",
    "MOR_THRESHOLDS",
    "RECALL_KS",
    "TIE_RULES",
    "grounding_report",
    "grounding_report_from_iou",
    "moment_recall_report",
    "retrieval_ranks",
    "retrieval_report",
]

#: Thresholds of IoU@θ (a row counts when its IoU is strictly greater than θ).
IOU_THRESHOLDS: tuple[float, ...] = (0.3, 0.5, 0.7)
#: Cut-offs of R@k.
RECALL_KS: tuple[int, ...] = (1, 5, 10, 25, 50, 100)
#: Cut-offs of MoR@k.
MOR_KS: tuple[int, ...] = (1, 10, 100)
#: IoU thresholds of MoR@k.
MOR_THRESHOLDS: tuple[float, ...] = (0.5, 0.7)
#: Accepted values of ``retrieval_ranks(..., ties=...)``.
TIE_RULES: tuple[str, ...] = ("pessimistic", "optimistic", "average")


def _check_ious(ious: npt.ArrayLike, name: str = "ious") -> npt.NDArray[np.float64]:
    arr = np.asarray(ious, dtype=np.float64)
    if arr.ndim != 1:
        raise InvalidInputError(f"{name} must have shape (n,); got shape {arr.shape}.")
    if arr.size == 0:
        raise InvalidInputError(f"{name} is empty; metrics need at least one row (n >= 1).")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise InvalidInputError(f"{name} holds NaN or inf in {bad} row(s); IoUs must be finite.")
    if (arr < 0).any() or (arr > 1).any():
        raise InvalidInputError(
            f"{name} must lie in [0, 1]; got min {arr.min()} and max {arr.max()}. "
            f"Compute them with mgsv_sk.data.spans.temporal_iou."
        )
    return arr


def _check_ranks(ranks: npt.ArrayLike) -> npt.NDArray[np.float64]:
    arr = np.asarray(ranks)
    if arr.ndim != 1:
        raise InvalidInputError(f"ranks must have shape (n,); got shape {arr.shape}.")
    if arr.size == 0:
        raise InvalidInputError("ranks is empty; metrics need at least one row (n >= 1).")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InvalidInputError(f"ranks must be numeric 0-based ranks; got dtype {arr.dtype}.")
    out = arr.astype(np.float64)
    if not np.isfinite(out).all() or (out < 0).any():
        raise InvalidInputError(
            "ranks must be finite 0-based ranks (>= 0), as returned by retrieval_ranks; "
            f"got min {out.min()} and max {out.max()}."
        )
    return out


def _check_ks(ks: Sequence[int], name: str) -> tuple[int, ...]:
    out = tuple(int(k) for k in ks)
    if not out or any(k < 1 or k != kk for k, kk in zip(out, ks, strict=True)):
        raise InvalidInputError(f"{name} must be a non-empty sequence of integers >= 1; got "
                                f"{ks!r}.")
    return out


def grounding_report_from_iou(
    ious: npt.ArrayLike, thresholds: Sequence[float] = IOU_THRESHOLDS
) -> dict[str, float]:
    """Single-music grounding metrics from precomputed per-row IoUs.

    Parameters
    ----------
    ious : array-like of shape (n,)
        Per-row IoU in ``[0, 1]`` (from `mgsv_sk.data.spans.temporal_iou`); ``n >= 1``.
    thresholds : sequence of float, default=(0.3, 0.5, 0.7)
        Thresholds θ of ``IoU@θ``.

    Returns
    -------
    report : dict of str to float
        ``"mIoU"`` (mean IoU) and ``"IoU@θ"`` for each θ (fraction of rows whose IoU is
        **strictly greater** than θ), in this order.

    Examples
    --------
    An IoU of exactly 0.5 does not count for ``IoU@0.5``:

    >>> grounding_report_from_iou([0.25, 0.5, 0.75, 1.0])
    {'mIoU': 0.625, 'IoU@0.3': 0.75, 'IoU@0.5': 0.5, 'IoU@0.7': 0.5}
    """
    arr = _check_ious(ious)
    report = {"mIoU": float(arr.mean())}
    for theta in thresholds:
        report[f"IoU@{theta:g}"] = float(np.mean(arr > theta))
    return report


def grounding_report(
    pred: npt.ArrayLike,
    gt: npt.ArrayLike,
    duration: npt.ArrayLike,
    thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> dict[str, float]:
    """Single-music grounding metrics (mIoU, IoU@θ) of predicted moments.

    Parameters
    ----------
    pred : array-like of shape (n, 2)
        Predicted ``(start, end)`` in seconds, unclamped (see `mgsv_sk.data.spans.temporal_iou`).
    gt : array-like of shape (n, 2)
        ``(music_start, music_end)`` in seconds.
    duration : array-like of shape (n,)
        Track durations in seconds (``music_total_duration``).
    thresholds : sequence of float, default=(0.3, 0.5, 0.7)
        Thresholds θ of ``IoU@θ``.

    Returns
    -------
    report : dict of str to float
        Keys ``"mIoU"``, ``"IoU@0.3"``, ``"IoU@0.5"``, ``"IoU@0.7"`` by default; see
        `grounding_report_from_iou`.

    Examples
    --------
    IoUs 1, 1/3 and 0.5 (the last prediction clamped to ``(0, 10)``):

    >>> r = grounding_report([[0, 20], [10, 30], [-10, 10]], [[0, 20], [20, 40], [0, 20]],
    ...                      duration=[60, 60, 60])
    >>> round(r["mIoU"], 4), r["IoU@0.3"], r["IoU@0.5"]
    (0.6111, 1.0, 0.3333333333333333)
    """
    return grounding_report_from_iou(temporal_iou(pred, gt, duration), thresholds)


def _gallery_index(
    gallery_ids: npt.ArrayLike, query_music_ids: npt.ArrayLike, n: int, g: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Group the gallery columns by id and locate each query's id.

    Returns ``codes`` of shape (g,), the group of each gallery column (groups numbered in
    order of first appearance), and ``true_group`` of shape (n,).
    """
    gal = np.asarray(gallery_ids)
    qry = np.asarray(query_music_ids)
    if gal.shape != (g,):
        raise InvalidInputError(
            f"gallery_ids must have shape ({g},) (one id per column of scores); "
            f"got shape {gal.shape}."
        )
    if qry.shape != (n,):
        raise InvalidInputError(
            f"query_music_ids must have shape ({n},) (one id per row of scores); "
            f"got shape {qry.shape}."
        )
    group_of: dict[object, int] = {}
    codes = np.fromiter(
        (group_of.setdefault(x, len(group_of)) for x in gal.tolist()), dtype=np.intp, count=g
    )
    true_group = np.fromiter((group_of.get(x, -1) for x in qry.tolist()), dtype=np.intp, count=n)
    missing = true_group < 0
    if missing.any():
        shown = ", ".join(repr(x) for x in qry[missing][:5].tolist())
        hint = ""
        if gal.dtype.kind != qry.dtype.kind:
            hint = (
                f" Note: gallery_ids has dtype {gal.dtype} and query_music_ids {qry.dtype};"
                f" ids are compared as given, so convert both to str first."
            )
        raise InvalidInputError(
            f"{int(missing.sum())} query_music_ids are not in gallery_ids (first: {shown}). "
            f"The gallery must hold every query's true track: build it from the distinct "
            f"music_ids of the evaluated split.{hint}"
        )
    return codes, true_group


def retrieval_ranks(
    scores: npt.ArrayLike,
    gallery_ids: npt.ArrayLike,
    query_music_ids: npt.ArrayLike,
    ties: str = "pessimistic",
) -> npt.NDArray[np.int64] | npt.NDArray[np.float64]:
    """0-based rank of each query's true track among the distinct gallery tracks.

    The gallery is de-duplicated by id first: an id found in several columns scores the
    maximum over its columns and counts once. Then ``rank0`` is the number of distinct
    gallery ids, other than the true one, ranked above the true track.

    Tie rule (``ties``):

    - ``"pessimistic"`` (default): every other id whose score is ``>=`` the true score is
      above it. A constant scorer gets the worst rank, never a lucky one.
    - ``"optimistic"``: only strictly greater scores are above it.
    - ``"average"``: strictly greater scores plus half of the tied ones (the expected rank
      under a random tie break); returns float64.

    Parameters
    ----------
    scores : array-like of shape (n, g)
        Score of query ``i`` against gallery column ``j``, higher is better; no NaN
        (``±inf`` is allowed).
    gallery_ids : array-like of shape (g,)
        Music id of each gallery column (str or int, compared as given, repeats allowed).
    query_music_ids : array-like of shape (n,)
        True music id of each query; each must be in ``gallery_ids``.
    ties : {"pessimistic", "optimistic", "average"}, default="pessimistic"
        How scores equal to the true track's score count, see above.

    Returns
    -------
    rank0 : ndarray of shape (n,)
        int64 for ``"pessimistic"`` and ``"optimistic"``, float64 for ``"average"``; in
        ``[0, number of distinct ids - 1]``.

    Raises
    ------
    ValueError
        On a shape mismatch, NaN scores, a query id missing from the gallery, or an unknown
        ``ties``.

    Examples
    --------
    Track ``"b"`` fills two columns (its score is their max, 0.9); query 0's true track
    ``"a"`` ties with ``"c"``:

    >>> scores = [[0.5, 0.1, 0.9, 0.5], [0.2, 0.3, 0.8, 0.1]]
    >>> ids = ["a", "b", "b", "c"]
    >>> retrieval_ranks(scores, ids, ["a", "b"])
    array([2, 0])
    >>> retrieval_ranks(scores, ids, ["a", "b"], ties="optimistic")
    array([1, 0])
    >>> retrieval_ranks(scores, ids, ["a", "b"], ties="average")
    array([1.5, 0. ])
    """
    if ties not in TIE_RULES:
        raise InvalidInputError(f"ties must be one of {TIE_RULES}; got {ties!r}.")
    s = np.asarray(scores)
    if s.ndim != 2:
        raise InvalidInputError(f"scores must have shape (n_queries, n_gallery); got shape "
                                f"{s.shape}.")
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)
    n, g = s.shape
    if np.isnan(s).any():
        rows = np.flatnonzero(np.isnan(s).any(axis=1))
        raise InvalidInputError(
            f"scores holds NaN in {len(rows)} row(s) (first: row {rows[0]}); "
            f"fix the scorer or replace NaN with -inf to rank those tracks last."
        )
    codes, true_group = _gallery_index(gallery_ids, query_music_ids, n, g)

    n_groups = int(codes.max()) + 1 if g else 0
    if n_groups < g:
        # Sort columns by group, then take the max over each run of equal groups.
        # Without repeats group k is column k already (groups numbered by first appearance).
        order = np.argsort(codes, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(codes[order]) != 0])
        s = np.maximum.reduceat(np.take(s, order, axis=1), starts, axis=1)  # (n, n_groups)

    true_score = s[np.arange(n), true_group][:, None]  # (n, 1)
    greater = np.asarray(np.count_nonzero(s > true_score, axis=1), dtype=np.int64)
    if ties == "optimistic":
        return greater
    # ">=" counts the true track itself once (its score is not NaN): subtract it.
    at_least = np.asarray(np.count_nonzero(s >= true_score, axis=1), dtype=np.int64) - 1
    if ties == "pessimistic":
        return at_least
    return np.asarray(greater + 0.5 * (at_least - greater), dtype=np.float64)


def retrieval_report(ranks: npt.ArrayLike, ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """Video-to-music retrieval metrics from 0-based ranks.

    Parameters
    ----------
    ranks : array-like of shape (n,)
        0-based rank of each query's true track (from `retrieval_ranks`); ``n >= 1``.
    ks : sequence of int, default=(1, 5, 10, 25, 50, 100)
        Cut-offs of ``R@k``; a k larger than the gallery is allowed (``R@k`` is then 1.0).

    Returns
    -------
    report : dict of str to float
        ``"R@k"`` for each k (fraction with ``rank0 < k``), then ``"MedianR"``
        (``median(rank0) + 1``), ``"MeanR"`` (``mean(rank0) + 1``) and ``"MRR"``
        (``mean(1 / (rank0 + 1))``).

    Examples
    --------
    >>> retrieval_report([0, 1, 3, 9], ks=(1, 5))
    {'R@1': 0.25, 'R@5': 0.75, 'MedianR': 3.0, 'MeanR': 4.25, 'MRR': 0.4625}
    """
    arr = _check_ranks(ranks)
    report = {f"R@{k}": float(np.mean(arr < k)) for k in _check_ks(ks, "ks")}
    report["MedianR"] = float(np.median(arr)) + 1.0
    report["MeanR"] = float(arr.mean()) + 1.0
    report["MRR"] = float(np.mean(1.0 / (arr + 1.0)))
    return report


def moment_recall_report(
    ranks: npt.ArrayLike,
    ious: npt.ArrayLike,
    ks: Sequence[int] = MOR_KS,
    thresholds: Sequence[float] = MOR_THRESHOLDS,
) -> dict[str, float]:
    """Music-set grounding metrics: MoR@k at IoU threshold θ.

    ``MoR@k,θ`` is the fraction of **all** rows whose true track ranks in the top k
    (``rank0 < k``) **and** whose moment predicted on the true track has ``IoU > θ``.

    Parameters
    ----------
    ranks : array-like of shape (n,)
        0-based rank of each query's true track (from `retrieval_ranks`); ``n >= 1``.
    ious : array-like of shape (n,)
        IoU of the moment predicted on the true track (from `mgsv_sk.data.spans.temporal_iou`).
    ks : sequence of int, default=(1, 10, 100)
        Cut-offs k.
    thresholds : sequence of float, default=(0.5, 0.7)
        IoU thresholds θ.

    Returns
    -------
    report : dict of str to float
        Keys ``"MoR@k,θ"`` ordered by k then θ: ``"MoR@1,0.5"``, ``"MoR@1,0.7"``,
        ``"MoR@10,0.5"``, ... by default.

    Examples
    --------
    >>> moment_recall_report([0, 0, 4, 20], [0.8, 0.6, 0.9, 0.9], ks=(1, 10))
    {'MoR@1,0.5': 0.5, 'MoR@1,0.7': 0.25, 'MoR@10,0.5': 0.75, 'MoR@10,0.7': 0.5}
    """
    r = _check_ranks(ranks)
    iou = _check_ious(ious)
    if iou.shape != r.shape:
        raise InvalidInputError(
            f"ious must have the same shape as ranks, {r.shape}; got shape {iou.shape}."
        )
    report: dict[str, float] = {}
    for k in _check_ks(ks, "ks"):
        hit = r < k
        for theta in thresholds:
            report[f"MoR@{k},{theta:g}"] = float(np.mean(hit & (iou > theta)))
    return report
