"""The retrieval search over a catalogue, once for every backend: the dual score, the full
X-Pool scan, the two-stage search (exact or ANN first stage) and the shards' search, and
the score of given (video, track) pairs. Scoring runs over chunks of tracks and of
videos: no [videos x tracks x D] tensor is ever built in one piece."""

from __future__ import annotations

from typing import Any

import numpy as np

from mgsv_sk.search.catalogue import Catalogue
from mgsv_sk.search.protocols import Scorer
from mgsv_sk.search.topk import top_k_indices

__all__ = ["TWO_STAGE_MARGIN", "VIDEO_BATCH", "check_positive", "pair_scores",
           "retrieval_scores"]

#: Two-stage search: tracks not re-ranked by X-Pool keep their dual score minus this, so
#: every re-ranked pair (dual + X-Pool, at least -2) ranks above them (dual, at most 1).
TWO_STAGE_MARGIN = 4.0
#: Videos per scoring call of a full X-Pool scan.
VIDEO_BATCH = 256


def check_positive(value: Any, name: str, *, optional: bool = False) -> int | None:
    """``value`` as an int >= 1 (or None when ``optional``), else a ValueError naming
    ``name``: the one check of a settable count (``xpool_top_k``, ``track_chunk``)."""
    if value is None and optional:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or value < 1:
        allowed = "a positive integer" + (" or None" if optional else "")
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return int(value)


def retrieval_scores(video_emb: np.ndarray, cat: Catalogue, xpool: Scorer | None, *,
                     use_dual: bool, xpool_top_k: int | None = None,
                     track_chunk: int = 128) -> np.ndarray:
    """Retrieval scores of unit-norm videos [B, D] against every catalogue track, (B, N).

    The dual score covers every track; the X-Pool score (``xpool`` given) every track
    too, or with ``xpool_top_k`` only each video's ``xpool_top_k`` best tracks by dual
    score (two-stage search for large catalogues; the rest keep their dual score minus
    :data:`TWO_STAGE_MARGIN`, so they rank after every re-ranked track). With an
    approximate index (``cat.approximate``) the top-K come from the index and the other
    tracks score -inf, X-Pool or not.
    """
    xpool_top_k = check_positive(xpool_top_k, "xpool_top_k", optional=True)
    track_chunk = int(check_positive(track_chunk, "track_chunk") or 1)
    video_emb = np.ascontiguousarray(video_emb, np.float32)
    if cat.shards is not None:
        # The shards answer each video's best tracks, scored as below would score them;
        # tracks outside that list score -inf (never retrieved), as with an ANN index.
        two_stage = xpool is not None and use_dual and xpool_top_k is not None
        depth = min(xpool_top_k, len(cat)) if xpool_top_k and two_stage else len(cat)
        scores, rows = cat.shards.search(video_emb, len(cat) if cat.shards.exact else depth,
                                         xpool_top_k=depth, rescore=xpool is not None)
        table = np.full((len(video_emb), len(cat)), -np.inf, np.float32)
        np.put_along_axis(table, rows, scores, axis=1)
        return table
    if xpool_top_k is not None and xpool_top_k < len(cat) and use_dual and cat.approximate:
        # ANN first stage: the tracks it does not return score -inf (never retrieved)
        first, cand = cat.first_stage(video_emb, xpool_top_k)  # (B, K) each
        table = np.full((len(video_emb), len(cat)), -np.inf, np.float32)
        videos, cols = np.nonzero(cand >= 0)
        rows = cand[videos, cols]
        table[videos, rows] = (first[videos, cols] if xpool is None
                               else xpool.pairs(video_emb[videos], rows, cat))
        return table
    if xpool is None:
        if not use_dual:
            raise ValueError("a retrieval score needs the dual score or X-Pool")
        return cat.dual(video_emb)
    if xpool_top_k is not None and xpool_top_k < len(cat) and use_dual:
        dual = cat.dual(video_emb)
        cand = top_k_indices(dual, xpool_top_k)  # (B, K)
        out = dual - TWO_STAGE_MARGIN
        videos = np.repeat(np.arange(len(video_emb)), cand.shape[1])
        out[videos, cand.ravel()] = xpool.pairs(video_emb[videos], cand.ravel(), cat)
        return out
    out = np.empty((len(video_emb), len(cat)), np.float32)
    for chunk in cat.chunks(track_chunk):
        for lo in range(0, len(video_emb), VIDEO_BATCH):
            out[lo: lo + VIDEO_BATCH, chunk.rows] = xpool.tracks(
                video_emb[lo: lo + VIDEO_BATCH], chunk)
    return out


def pair_scores(video_emb: np.ndarray, rows: np.ndarray, cat: Catalogue,
                xpool: Scorer | None) -> np.ndarray:
    """Retrieval score of each (video i, catalogue row ``rows[i]``) pair, (n,) float32."""
    video_emb = np.ascontiguousarray(video_emb, np.float32)
    if xpool is None:
        return (video_emb * cat.emb(rows)).sum(-1).astype(np.float32)
    return np.asarray(xpool.pairs(video_emb, np.asarray(rows), cat), np.float32)
