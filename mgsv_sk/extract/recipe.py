"""The MGSV-EC release's feature recipe as numbers: which frames, which music windows,
which normalisation. Pure numpy; the decoders and encoders follow these functions.

Video: one frame per whole second (the frame on screen at that second by presentation
timestamp: the frame at ``int(sec * fps)`` at a constant rate, see
:mod:`mgsv_sk.extract.video`), seconds
``floor(start)`` .. ``min(floor(end), 49)``; shorter side to 224 (bicubic), centre crop
224, CLIP normalisation; CLIP ViT-B/32 image embedding, 512-d, not L2-normalised.

Music: channel 0, 16 kHz, padded or cut to 240 s; 96 windows centred at 2.5 k s, each
``[max(0, c - 5), min(240, c + 5)]``; Kaldi fbank (128 mel bins, 25 ms frames, 10 ms shift,
Hanning window, no dither, no energy) padded or cut to 1024 frames and normalised
``(x + 4.2677393) / (2 * 4.5689974)``; AST pooled output (mean of the CLS and distillation
tokens after the final LayerNorm), 768-d; a window is valid when its centre <= the
track's duration.
"""

from __future__ import annotations

import math

import numpy as np

from mgsv_sk.data.spans import (
    MAX_MUSIC_SECONDS,
    MAX_MUSIC_SNIPPETS,
    MAX_VIDEO_FRAMES,
    SNIPPET_HOP_SECONDS,
)

__all__ = [
    "AST_MEAN",
    "AST_STD",
    "CLIP_MEAN",
    "CLIP_STD",
    "FBANK_FRAMES",
    "IMAGE_SIZE",
    "MEL_BINS",
    "SAMPLE_RATE",
    "WINDOW_HALF_SECONDS",
    "frame_indices",
    "frame_seconds",
    "window_bounds",
    "window_centres",
    "window_mask",
]

#: CLIP's input side and normalisation (RGB channel order).
IMAGE_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: The audio recipe.
SAMPLE_RATE = 16_000
MEL_BINS = 128
FBANK_FRAMES = 1024
FRAME_LENGTH = 400  # 25 ms at 16 kHz
FRAME_SHIFT = 160  # 10 ms
WINDOW_HALF_SECONDS = 5.0
AST_MEAN = -4.2677393
AST_STD = 4.5689974


def frame_seconds(start: float, end: float) -> np.ndarray:
    """The whole seconds whose frame is kept: ``floor(start)`` .. ``min(floor(end), 49)``.

    Examples
    --------
    >>> frame_seconds(0.0, 10.4).tolist()
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    >>> frame_seconds(3.7, 80.0)[[0, -1]].tolist(), len(frame_seconds(0, 80))
    ([3, 49], 50)
    """
    first = math.floor(start)
    last = min(math.floor(end), MAX_VIDEO_FRAMES - 1)
    return np.arange(first, last + 1, dtype=np.int64)


def frame_indices(seconds: np.ndarray, fps: float, n_frames: int | None = None) -> np.ndarray:
    """Frame index of each second: ``int(sec * fps)``; with ``n_frames``, only the indices
    the video has (a last second whose frame lies past the end is dropped).

    Examples
    --------
    >>> frame_indices(np.arange(4), 29.97).tolist()
    [0, 29, 59, 89]
    >>> frame_indices(np.arange(4), 25.0, n_frames=75).tolist()
    [0, 25, 50]
    """
    idx = np.array([int(float(s) * float(fps)) for s in seconds], dtype=np.int64)
    return idx if n_frames is None else idx[idx < n_frames]


def window_centres() -> np.ndarray:
    """Centres of the 96 music windows, seconds: 0, 2.5, ..., 237.5 (shape (96,))."""
    return np.arange(MAX_MUSIC_SNIPPETS, dtype=np.float64) * SNIPPET_HOP_SECONDS


def window_bounds() -> np.ndarray:
    """``[max(0, c - 5), min(240, c + 5)]`` of every window, seconds, shape (96, 2).

    Examples
    --------
    >>> window_bounds()[[0, 1, 2, 95]].tolist()
    [[0.0, 5.0], [0.0, 7.5], [0.0, 10.0], [232.5, 240.0]]
    """
    c = window_centres()
    return np.stack([np.maximum(0.0, c - WINDOW_HALF_SECONDS),
                     np.minimum(MAX_MUSIC_SECONDS, c + WINDOW_HALF_SECONDS)], axis=1)


def window_mask(duration: float) -> np.ndarray:
    """1 where a window's centre <= the track's duration, float32, shape (96,).

    Examples
    --------
    >>> int(window_mask(30.0).sum()), int(window_mask(31.0).sum()), int(window_mask(500).sum())
    (13, 13, 96)
    """
    return (window_centres() <= float(duration)).astype(np.float32)
