"""Decode a video to the recipe's CLIP inputs (PyAV + Pillow, numpy).

One frame per whole second: second ``s`` is the frame at index ``int(s * fps)`` in decode
order, for ``s`` in ``floor(start)`` .. ``min(floor(end), 49)`` (a second whose frame lies
past the last frame is dropped). Each frame is converted to RGB, its shorter side resized
to 224 with Pillow's bicubic filter (the longer side ``int(224 * long / short)``), centre
cropped to 224 x 224 and normalised with CLIP's mean and std.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._deps import require
from .recipe import CLIP_MEAN, CLIP_STD, IMAGE_SIZE, frame_indices, frame_seconds

__all__ = ["Clip", "clip_pixels", "load_clip"]

_MEAN = np.asarray(CLIP_MEAN, np.float32)[:, None, None]
_STD = np.asarray(CLIP_STD, np.float32)[:, None, None]


@dataclass(frozen=True)
class Clip:
    """A decoded video: ``pixels`` (F, 3, 224, 224) float32 CLIP inputs, ``seconds`` (F,)
    the second of each frame, ``duration`` (s), ``fps``, ``width`` and ``height``."""

    pixels: np.ndarray
    seconds: np.ndarray
    duration: float
    fps: float
    width: int
    height: int


def clip_pixels(image: Any) -> np.ndarray:
    """One PIL image -> the (3, 224, 224) float32 CLIP input (resize, crop, normalise).

    Examples
    --------
    >>> from PIL import Image
    >>> clip_pixels(Image.new("RGB", (640, 360), (255, 0, 0))).shape
    (3, 224, 224)
    """
    pil = require("PIL.Image", "resizing video frames")
    image = image.convert("RGB")
    w, h = image.size
    if w <= h:
        size = (IMAGE_SIZE, int(IMAGE_SIZE * h / w))
    else:
        size = (int(IMAGE_SIZE * w / h), IMAGE_SIZE)
    image = image.resize(size, pil.BICUBIC)
    left = int(round((size[0] - IMAGE_SIZE) / 2.0))
    top = int(round((size[1] - IMAGE_SIZE) / 2.0))
    image = image.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
    rgb = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return ((rgb - _MEAN) / _STD).astype(np.float32)


def _duration(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return float(container.duration) / 1e6
    return None


def load_clip(path: str | os.PathLike[str], start: float = 0.0,
              end: float | None = None) -> Clip:
    """Decode the recipe's frames of ``path`` between ``start`` and ``end`` seconds
    (default: the whole video, at most its first 50 s).

    Raises
    ------
    ValueError
        No video stream, no frame rate, or no frame in the range.
    """
    av = require("av", "decoding videos")
    with av.open(os.fspath(path)) as container:
        if not container.streams.video:
            raise ValueError("the file has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        if not rate:
            raise ValueError("the video stream declares no frame rate")
        fps = float(rate)
        duration = _duration(container, stream)
        if end is None:
            if duration is None:
                raise ValueError("the video declares no duration; pass end=")
            end = duration
        seconds = frame_seconds(start, end)
        wanted = dict(zip(frame_indices(seconds, fps).tolist(), seconds.tolist()))
        last = max(wanted) if wanted else -1
        pixels, kept = [], []
        for index, frame in enumerate(container.decode(stream)):
            if index in wanted:
                pixels.append(clip_pixels(frame.to_image()))
                kept.append(wanted[index])
            if index >= last:
                break
        width, height = stream.codec_context.width, stream.codec_context.height
    if not pixels:
        raise ValueError(f"no frame between {start:g} s and {end:g} s")
    return Clip(np.stack(pixels), np.asarray(kept, np.int64), float(duration or end), fps,
                int(width), int(height))
