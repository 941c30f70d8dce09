"""Batched inference with a MaDe model: video embeddings, catalogue scores, grounding.

Shared by the estimator and the per-epoch validation of the fit loop.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from mgsv_sk.data.features import FeatureSource, _progress
from mgsv_sk.grounding.moments import select_windows
from mgsv_sk.search import sorted_batches

from ..nn.model import Grounding, MaDe
from .device import Autocast, autocast_for, model_device
from .padding import pad_stack

if TYPE_CHECKING:
    from .catalogue import MusicCatalogue

__all__ = ["ground_pairs", "snippet_evidence", "video_embeddings"]


def _autocast(model: MaDe, autocast: Autocast) -> torch.autocast:
    """Autocast on the model's device in dtype ``autocast`` (None: float32)."""
    return autocast_for(model_device(model), autocast)


@torch.no_grad()
def video_embeddings(
    model: MaDe,
    video_ids: Sequence[str],
    source: FeatureSource,
    batch_size: int = 256,
    autocast: Autocast = None,
    verbose: int = 0,
) -> torch.Tensor:
    """Unit-norm video embeddings h(v), float32 [n, D] on the CPU, in the order of
    ``video_ids``, computed on the model's device (``verbose > 0``: a progress bar over the
    videos)."""
    device = model_device(model)
    lengths = source.video_lengths(video_ids)
    out = torch.zeros(len(video_ids), model.cfg.d_model)
    bar = _progress(len(video_ids), verbose > 0, "encoding videos")
    for rows in sorted_batches(lengths, batch_size):
        video, mask = pad_stack(source.videos(video_ids[r] for r in rows))
        with _autocast(model, autocast):
            enc = model.encode_video(video.to(device), mask.to(device))
        out[torch.from_numpy(rows)] = enc.emb.float().cpu()
        bar.update(len(rows))
    bar.close()
    return out


@torch.no_grad()
def ground_pairs(
    model: MaDe,
    video_ids: Sequence[str],
    track_rows: np.ndarray,
    catalogue: MusicCatalogue,
    source: FeatureSource,
    seconds: np.ndarray,
    moments: int = 1,
    batch_size: int = 128,
    autocast: Autocast = None,
    verbose: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Up to ``moments`` non-overlapping moments of video i (``seconds[i]`` long) in
    catalogue track ``track_rows[i]``, best first.

    Returns start and end in seconds and the moment score, each shape (n, moments), NaN
    where a track has fewer windows (see :func:`mgsv_sk.grounding.moments.select_windows`).
    ``verbose > 0``: a progress bar over the videos.
    """
    out = [np.full((len(video_ids), moments), np.nan) for _ in range(3)]
    seconds = np.asarray(seconds, dtype=np.float32)
    for rows, grounding in _grounding_batches(model, video_ids, track_rows, catalogue, source,
                                              seconds, batch_size, autocast, verbose):
        starts, ends, logits = (t.float().cpu().numpy() for t in (
            grounding.starts, grounding.ends, grounding.logits))
        picked = select_windows(starts, ends, logits, moments)
        for col, value in zip(out, picked):
            col[rows] = value
    return out[0], out[1], out[2]


@torch.no_grad()
def snippet_evidence(
    model: MaDe,
    video_ids: Sequence[str],
    track_rows: np.ndarray,
    catalogue: MusicCatalogue,
    source: FeatureSource,
    batch_size: int = 128,
    autocast: Autocast = None,
    verbose: int = 0,
) -> list[np.ndarray]:
    """The detector's per-snippet evidence for video i in catalogue track ``track_rows[i]``:
    sigmoid of ``snippet_logits`` over the track's valid snippets (snippet k centred at
    2.5 k s), one float64 array of shape (S_i,) per video."""
    n_snippets = catalogue.lengths
    out: list[np.ndarray] = [np.zeros(0)] * len(video_ids)
    seconds = source.video_lengths(video_ids).astype(np.float32)  # evidence ignores them
    for rows, grounding in _grounding_batches(model, video_ids, track_rows, catalogue, source,
                                              seconds, batch_size, autocast, verbose):
        probs = torch.sigmoid(grounding.snippet_logits.float()).cpu().numpy()  # [B,S]
        for j, r in enumerate(rows):
            out[r] = probs[j, : n_snippets[track_rows[r]]].astype(np.float64)
    return out


def _grounding_batches(
    model: MaDe,
    video_ids: Sequence[str],
    track_rows: np.ndarray,
    catalogue: MusicCatalogue,
    source: FeatureSource,
    seconds: np.ndarray,
    batch_size: int,
    autocast: Autocast,
    verbose: int,
) -> Iterator[tuple[np.ndarray, Grounding]]:
    """Detector outputs batch by batch (videos sorted by length): (rows, Grounding)."""
    device = model_device(model)
    lengths = source.video_lengths(video_ids)
    bar = _progress(len(video_ids), verbose > 0, "grounding")
    try:
        for rows in sorted_batches(lengths, batch_size):
            video, mask = pad_stack(source.videos(video_ids[r] for r in rows))
            unique, index = np.unique(track_rows[rows], return_inverse=True)
            music = catalogue.encoding(unique)  # cached on the CPU
            with torch.no_grad(), _autocast(model, autocast):
                v_enc = model.encode_video(video.to(device), mask.to(device))
                grounding = model.ground(v_enc, type(music)(*(t.to(device) for t in music)),
                                         torch.from_numpy(index.astype(np.int64)).to(device),
                                         torch.from_numpy(seconds[rows]).to(device))
            yield rows, grounding
            bar.update(len(rows))
    finally:
        bar.close()
