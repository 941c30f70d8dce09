"""Batched inference with a MaDe model: video embeddings, catalogue scores, grounding.

Shared by the estimator and the per-epoch validation of the fit loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ._batching import pad_stack, sorted_batches
from .features import FeatureSource
from .nn.model import MaDe
from .ranking import MusicCatalogue
from .spans import MAX_MUSIC_SECONDS

__all__ = ["ground_pairs", "pair_scores", "video_embeddings"]


def _autocast(enabled: bool) -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def video_embeddings(
    model: MaDe,
    video_ids: Sequence[str],
    source: FeatureSource,
    batch_size: int = 256,
    autocast: bool = False,
) -> torch.Tensor:
    """Unit-norm video embeddings h(v), float32 [n, D], in the order of ``video_ids``."""
    lengths = source.video_lengths(video_ids)
    out = torch.zeros(len(video_ids), model.cfg.d_model)
    for rows in sorted_batches(lengths, batch_size):
        video, mask = pad_stack(source.videos(video_ids[r] for r in rows))
        with _autocast(autocast):
            enc = model.encode_video(video, mask)
        out[torch.from_numpy(rows)] = enc.emb.float()
    return out


@torch.no_grad()
def ground_pairs(
    model: MaDe,
    video_ids: Sequence[str],
    track_rows: np.ndarray,
    catalogue: MusicCatalogue,
    source: FeatureSource,
    batch_size: int = 128,
    autocast: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Moment of video i in catalogue track ``track_rows[i]``.

    Returns start and end in seconds (clamped to [0, 240]) and the detector's foreground
    probability, each shape (n,).
    """
    lengths = source.video_lengths(video_ids)
    cw = np.zeros((len(video_ids), 2), np.float64)
    confidence = np.zeros(len(video_ids), np.float64)
    for rows in sorted_batches(lengths, batch_size):
        video, mask = pad_stack(source.videos(video_ids[r] for r in rows))
        unique, index = np.unique(track_rows[rows], return_inverse=True)
        with _autocast(autocast):
            v_enc = model.encode_video(video, mask)
            grounding = model.ground(v_enc, catalogue.encoding(unique),
                                     torch.from_numpy(index.astype(np.int64)))
        spans, conf = model.moment(grounding)
        cw[rows] = spans.float().numpy()
        confidence[rows] = conf.float().numpy()
    start = np.clip((cw[:, 0] - cw[:, 1] / 2) * MAX_MUSIC_SECONDS, 0.0, MAX_MUSIC_SECONDS)
    end = np.clip((cw[:, 0] + cw[:, 1] / 2) * MAX_MUSIC_SECONDS, start, MAX_MUSIC_SECONDS)
    return start, end, confidence


@torch.no_grad()
def pair_scores(
    model: MaDe,
    video_emb: torch.Tensor,
    track_rows: np.ndarray,
    catalogue: MusicCatalogue,
) -> np.ndarray:
    """Retrieval score of each (video i, catalogue track ``track_rows[i]``) pair, (n,)."""
    rows = np.asarray(track_rows)
    v = video_emb.float()
    total = np.zeros(len(rows), np.float32)
    if model.cfg.use_dual:
        total += (v * torch.from_numpy(catalogue.emb[rows])).sum(-1).numpy()
    if model.xpool is not None and catalogue.xpool_kv is not None:
        for lo in range(0, len(rows), 256):
            part = rows[lo : lo + 256]
            kv, mask = pad_stack([catalogue.xpool_kv[catalogue.offsets[r]:catalogue.offsets[r + 1]]
                                  for r in part])
            keys, values = kv.chunk(2, dim=-1)
            total[lo : lo + len(part)] += model.xpool.paired_from_kv(
                v[lo : lo + len(part)], keys, values, mask).numpy()
    return total
