"""Decode a video to the recipe's CLIP inputs (PyAV + Pillow, numpy).

One frame per whole second: second ``s`` is the frame on screen at ``s`` seconds, i.e. the
last frame whose presentation timestamp is <= ``s`` (counted from the first frame), for
``s`` in ``floor(start)`` .. ``min(floor(end), 49)``; a second past the end of the last
frame is dropped. At a constant frame rate this is the recipe's frame ``int(s * fps)``;
below 1 fps one frame stands for each second it is on screen, and a variable-frame-rate
file keeps every second (a ``UserWarning`` says when the timestamps disagree with the
declared rate). Each frame is converted to RGB, its shorter side resized to 224 with
Pillow's bicubic filter (the longer side ``int(224 * long / short)``), centre cropped to
224 x 224 and normalised with CLIP's mean and std; memory is bounded by that output, not by
the frame's shape (a very wide or tall frame is cropped before it is resized).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from mgsv_sk._extras import require
from mgsv_sk.errors import InvalidInputError
from mgsv_sk.files._paths import regular_file

from .recipe import CLIP_MEAN, CLIP_STD, IMAGE_SIZE, frame_seconds

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


#: Up to this aspect ratio a frame is resized whole, then cropped (the recipe, bit for
#: bit); beyond it only the part the crop keeps is resized, so a 1 x 16000 frame costs
#: what a 224 x 224 one does.
_MAX_ASPECT = 8


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
        size = (IMAGE_SIZE, max(IMAGE_SIZE, int(IMAGE_SIZE * h / w)))
    else:
        size = (max(IMAGE_SIZE, int(IMAGE_SIZE * w / h)), IMAGE_SIZE)
    left = int(round((size[0] - IMAGE_SIZE) / 2.0))
    top = int(round((size[1] - IMAGE_SIZE) / 2.0))
    if max(size) <= _MAX_ASPECT * IMAGE_SIZE:
        image = image.resize(size, pil.BICUBIC)
        image = image.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
    else:  # the same mapping, restricted to the source box the crop keeps
        sx, sy = size[0] / w, size[1] / h
        box = (left / sx, top / sy, (left + IMAGE_SIZE) / sx, (top + IMAGE_SIZE) / sy)
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), pil.BICUBIC, box=box)
    rgb = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return ((rgb - _MEAN) / _STD).astype(np.float32)


def _duration(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return float(container.duration) / 1e6
    return None


def _timed(frames: Iterator[Any], fps: float) -> Iterator[tuple[int, float, float, Any]]:
    """(index, seconds from the first frame, seconds on screen, frame) of each decoded
    frame; a frame without a timestamp is placed by its index at the declared rate."""
    first: float | None = None
    for index, frame in enumerate(frames):
        t = frame.time
        if t is None:
            t = index / fps if first is None else first + index / fps
        if first is None:
            first = t
        shown = 1.0 / fps
        if getattr(frame, "duration", None) and frame.time_base is not None:
            shown = float(frame.duration * frame.time_base) or shown
        yield index, t - first, shown, frame


def select_frames(frames: Iterator[Any], seconds: np.ndarray, fps: float
                  ) -> tuple[list[int], list[Any], int]:
    """The frame on screen at each of ``seconds`` (sorted): (kept seconds, their frames,
    how many picks differ from the index ``int(s * fps)`` the declared rate gives).
    A frame standing for several seconds is returned once per second (same object)."""
    kept: list[int] = []
    picked: list[Any] = []
    mismatches = 0
    wanted = [int(s) for s in seconds]
    j = 0
    prev: tuple[int, float, float, Any] | None = None
    eps = 1e-6
    for item in _timed(frames, fps):
        _, t, _, _ = item
        while j < len(wanted) and prev is not None and wanted[j] < t - eps:
            kept.append(wanted[j])
            picked.append(prev[3])
            mismatches += prev[0] != int(wanted[j] * fps + eps)
            j += 1
        while j < len(wanted) and prev is None and wanted[j] < t - eps:
            j += 1  # before the first frame: nothing on screen
        if j >= len(wanted):
            break
        prev = item
    if prev is not None:  # seconds while the last frame is still on screen
        index, t, shown, frame = prev
        while j < len(wanted) and wanted[j] < t + shown - eps:
            kept.append(wanted[j])
            picked.append(frame)
            mismatches += index != int(wanted[j] * fps + eps)
            j += 1
    return kept, picked, mismatches


def load_clip(path: str | os.PathLike[str], start: float = 0.0,
              end: float | None = None) -> Clip:
    """Decode the recipe's frames of ``path`` between ``start`` and ``end`` seconds
    (default: the whole video, at most its first 50 s).

    Raises
    ------
    FileNotFoundError
        ``path`` names nothing.
    ValueError
        Not a regular file (a FIFO, a folder, a broken link: never opened), no video
        stream, no frame rate, or no frame in the range.
    """
    av = require("av", "decoding videos")
    path = regular_file(path, "video file")
    with av.open(os.fspath(path)) as container:
        if not container.streams.video:
            raise InvalidInputError("the file has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        if not rate or not float(rate) > 0:
            raise InvalidInputError("the video stream declares no frame rate")
        fps = float(rate)
        duration = _duration(container, stream)
        if end is None:
            if duration is None:
                raise InvalidInputError("the video declares no duration; pass end=")
            end = duration
        seconds = frame_seconds(start, end)
        kept, frames, mismatches = select_frames(container.decode(stream), seconds, fps)
        pixels: dict[int, np.ndarray] = {}  # a frame on screen for several seconds: once
        for f in frames:
            if id(f) not in pixels:
                pixels[id(f)] = clip_pixels(f.to_image())
        rows = [pixels[id(f)] for f in frames]
        width, height = stream.codec_context.width, stream.codec_context.height
    if mismatches:
        warnings.warn(
            f"{os.fspath(path)}: the frame timestamps disagree with the declared rate "
            f"({fps:g} fps) at {mismatches} of {len(kept)} second(s) (a variable frame "
            "rate?); frames were chosen by timestamp, the frame on screen at each second",
            UserWarning, stacklevel=2)
    if not rows:
        raise InvalidInputError(f"no frame between {start:g} s and {end:g} s")
    return Clip(np.stack(rows), np.asarray(kept, np.int64), float(duration or end), fps,
                int(width), int(height))
