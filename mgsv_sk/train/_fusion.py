"""The re-ranking weight chosen on the validation split (``moment_weight="auto"``).

Ranking re-orders each video's best ``rerank_depth`` tracks by ``score + moment_weight *
logit(moment_score)``. How much the moment head's evidence should count depends on the
data: where tracks come in families of near-duplicates the retrieval score cannot tell
neighbours apart and the moment head's frame-by-frame alignment can (measured in
``benchmarks/retrieval_limits.py``: R@1 0.84 at the old fixed 0.05, 0.90 at 0.5-1, on
tracks never seen in training). At the end of a fit the held-out videos are ranked once
against the validation gallery, their candidates grounded once, and each weight of
:data:`WEIGHTS` replayed on those arrays; the best validation R@1 (then MRR) wins.
"""

from __future__ import annotations

import numpy as np

from mgsv_sk.evaluation.metrics import retrieval_ranks
from mgsv_sk.search.rerank import rerank_table
from mgsv_sk.search.topk import top_k_indices

from ..infer.batched import ground_pairs
from ..infer.device import Autocast
from ..nn.model import MaDe
from ._training import Split, evaluating, split_scores

__all__ = ["WEIGHTS", "choose_weight", "tune_moment_weight"]

#: The weights tried, the old fixed default (0.05) among them.
WEIGHTS = (0.0, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def tune_moment_weight(model: MaDe, split: Split, depth: int,
                       autocast: Autocast = None) -> tuple[float, dict[str, float]]:
    """The weight of :data:`WEIGHTS` with the best validation R@1 (ties: MRR, then the
    smaller weight), and each weight's validation R@1 (keys: the weights as text)."""
    with evaluating(model):
        catalogue, scores = split_scores(model, split, autocast)
        table = np.asarray(scores, np.float64)  # [n, N]
        d = min(depth, table.shape[1])
        top = top_k_indices(table, d)  # [n, d]
        videos = np.repeat(np.arange(len(split.video_ids)), d)
        _, _, moment = ground_pairs(model, [split.video_ids[i] for i in videos], top.ravel(),
                                    catalogue, split.source, split.seconds[videos],
                                    autocast=autocast)
    return choose_weight(table, top, moment[:, 0].reshape(len(split.video_ids), d),
                         list(catalogue.ids), list(split.music_ids))


def choose_weight(table: np.ndarray, top: np.ndarray, moment: np.ndarray,
                  gallery_ids: list[str], truth: list[str]) -> tuple[float, dict[str, float]]:
    """The weight of :data:`WEIGHTS` whose re-ranking of ``table`` (videos x gallery) gives
    the best R@1 (ties: MRR, then the smaller weight); ``top`` (n, d) each video's
    candidates, ``moment`` (n, d) their moment scores, ``truth`` each video's track."""
    ids, want = np.asarray(gallery_ids, dtype=object), np.asarray(truth, dtype=object)
    scored: dict[str, tuple[float, float]] = {}
    for weight in WEIGHTS:
        ranks = retrieval_ranks(rerank_table(table, top, moment, weight), ids, want)
        scored[f"{weight:g}"] = (float(np.mean(ranks == 0)), float(np.mean(1.0 / (ranks + 1))))
    best = max(WEIGHTS, key=lambda w: (*scored[f"{w:g}"], -w))
    return best, {w: r1 for w, (r1, _) in scored.items()}
