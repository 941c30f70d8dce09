"""From frame rows to padded tensors: length-grouped batches, each track loaded once.

Valid lengths average about 23 of 50 frames and 56 of 96 snippets, so a batch is padded
only to its own longest item, and batches are drawn from items of similar length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mgsv_sk.data.features import FeatureSource
from mgsv_sk.data.spans import MAX_MUSIC_SECONDS
from mgsv_sk.search import sorted_batches

from ..infer.padding import pad_stack

__all__ = ["Batch", "collate", "length_grouped_batches", "pad_stack", "sorted_batches"]


@dataclass
class Batch:
    """One batch: B videos and the U distinct tracks they use.

    video [B, F, 512] float32, video_mask [B, F] bool, music [U, S, 768], music_mask
    [U, S] bool, music_index [B] long (video b uses track music_index[b]), video_seconds
    [B] float32 (the videos' lengths), target_cw [B, 2] (center, width) / 240 s or None,
    rows [B] (positions in the frame).
    """

    video: torch.Tensor
    video_mask: torch.Tensor
    music: torch.Tensor
    music_mask: torch.Tensor
    music_index: torch.Tensor
    video_seconds: torch.Tensor
    target_cw: torch.Tensor | None
    rows: np.ndarray
    music_ids: list[str]

    def to(self, device: torch.device | str) -> Batch:
        if str(device) == "cpu":
            return self
        move = {k: getattr(self, k).to(device, non_blocking=True) for k in
                ("video", "video_mask", "music", "music_mask", "music_index", "video_seconds")}
        target = None if self.target_cw is None else self.target_cw.to(device)
        return Batch(**move, target_cw=target, rows=self.rows, music_ids=self.music_ids)


def target_center_width(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Ground-truth (center, width) / 240 s of moments, the end cut at 240 s; shape (n, 2)."""
    end = np.minimum(end, MAX_MUSIC_SECONDS)
    return np.stack([(start + end) / 2.0, end - start], axis=1) / MAX_MUSIC_SECONDS


def collate(
    rows: np.ndarray,
    video_ids: Sequence[str],
    music_ids: Sequence[str],
    source: FeatureSource,
    seconds: np.ndarray,
    target_cw: np.ndarray | None = None,
) -> Batch:
    """Read and pad the features of ``rows``; a track shared by several videos is read
    and later encoded once. ``seconds``: every video's length (indexed by ``rows``)."""
    batch_music = [music_ids[r] for r in rows]
    unique = list(dict.fromkeys(batch_music))
    position = {m: i for i, m in enumerate(unique)}
    video, video_mask = pad_stack(source.videos(video_ids[r] for r in rows))
    music, music_mask = pad_stack(source.musics(unique))
    index = torch.tensor([position[m] for m in batch_music], dtype=torch.long)
    target = None if target_cw is None else torch.from_numpy(
        np.ascontiguousarray(target_cw[rows], dtype=np.float32))
    video_seconds = torch.from_numpy(np.ascontiguousarray(seconds[rows], dtype=np.float32))
    return Batch(video, video_mask, music, music_mask, index, video_seconds, target, rows,
                 unique)


def length_grouped_batches(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator, pool: int = 50
) -> list[np.ndarray]:
    """Shuffled batches of similar-length items for training.

    Items are shuffled, cut into pools of ``pool`` batches, sorted by length inside a pool,
    cut into batches, and the batches shuffled: padding shrinks while every batch still
    mixes items from across the data set.
    """
    order = rng.permutation(len(lengths))
    batches: list[np.ndarray] = []
    step = batch_size * pool
    for lo in range(0, len(order), step):
        chunk = order[lo : lo + step]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]
