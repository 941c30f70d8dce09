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

Decoding is bounded by its output, not its input (:class:`VideoLimits`): the stream's codec,
frame size and the number of frames to decode are checked from the header before any
frame is decoded (a 200 KB file can declare 8192 x 8192 frames), each decoded frame is
checked again (a stream may change size), a sampled frame is converted to its 224 x 224
input at once (no decoded frame is kept), and a frame above 1920 x 1080 pixels is scaled
down while it is converted from YUV (area filter, shorter side to 448, twice the model's
input, then the recipe's bicubic resize), so no full-size RGB copy is ever made.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from mgsv_sk._extras import require
from mgsv_sk.errors import InvalidInputError
from mgsv_sk.extract._av import decoding
from mgsv_sk.files import regular_file

from .recipe import CLIP_MEAN, CLIP_STD, IMAGE_SIZE, frame_seconds

__all__ = ["Clip", "VideoLimitError", "VideoLimits", "clip_pixels", "load_clip"]

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


class VideoLimitError(InvalidInputError):
    """A video over :class:`VideoLimits`: readable, but not within what the reader takes."""


@dataclass(frozen=True)
class VideoLimits:
    """What one video may ask of the decoder, checked before any frame is decoded.

    Parameters
    ----------
    max_pixels : int
        Largest frame (width x height); default 3840 x 2160 (4K UHD, either orientation).
        The decoder holds several frames of this size (references, threads).
    max_side : int
        Longest side of a frame.
    max_frames : int
        Frames decoded to reach the last sampled second (the declared rate times the
        seconds read, and counted while decoding); default 50 s at 120 fps.
    codecs : frozenset of str, optional
        FFmpeg decoder names accepted (e.g. ``{"h264", "vp9"}``); None: any FFmpeg decodes.
    """

    max_pixels: int = 3840 * 2160
    max_side: int = 8192
    max_frames: int = 6000
    codecs: frozenset[str] | None = None


#: The limits of :func:`load_clip` unless given.
DEFAULT_LIMITS = VideoLimits()
#: The decoders a server accepts by default (:data:`SERVE_LIMITS`): the codecs phones,
#: cameras and browsers write; an unusual decoder is attack surface a service need not expose.
COMMON_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "libdav1d", "libaom-av1",
                           "mpeg4", "mpeg2video", "mpeg1video", "h263", "mjpeg", "prores",
                           "theora", "libvpx", "libvpx-vp9"})
#: The limits ``mgsv-sk serve`` decodes uploads under.
SERVE_LIMITS = VideoLimits(codecs=COMMON_CODECS)
#: Frames up to this many pixels follow the recipe bit for bit (full-size RGB, Pillow's
#: bicubic resize); larger ones are scaled down by the YUV -> RGB conversion first.
_EXACT_PIXELS = 1920 * 1088
_PRESCALE_SIDE = 2 * IMAGE_SIZE

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


def frame_input(frame: Any) -> np.ndarray:
    """One decoded PyAV frame -> its (3, 224, 224) CLIP input, without a full-size RGB copy
    of a frame above 1920 x 1080 (scaled by the YUV -> RGB conversion, area filter)."""
    w, h = int(frame.width), int(frame.height)
    if w * h <= _EXACT_PIXELS:
        return clip_pixels(frame.to_image())
    scale = min(1.0, _PRESCALE_SIDE / min(w, h))
    size = max(1, round(w * scale)), max(1, round(h * scale))
    return clip_pixels(frame.to_image(width=size[0], height=size[1], interpolation="AREA"))


def check_stream(stream: Any, fps: float, last_second: float, limits: VideoLimits) -> None:
    """The stream's codec, frame size and frames to decode against ``limits``, from the
    header only (nothing decoded). Raises VideoLimitError naming the limit and the fix."""
    ctx = stream.codec_context
    codec = getattr(ctx, "name", None) or "unknown"
    if limits.codecs is not None and codec not in limits.codecs:
        raise VideoLimitError(f"the video's codec {codec!r} is not one this reader decodes "
                         f"({', '.join(sorted(limits.codecs))}); re-encode it as H.264, e.g. "
                         "`ffmpeg -i IN -c:v libx264 OUT.mp4`")
    w, h = int(ctx.width or 0), int(ctx.height or 0)
    if w <= 0 or h <= 0:
        raise ValueError("the video stream declares no frame size")
    if w * h > limits.max_pixels or max(w, h) > limits.max_side:
        raise VideoLimitError(f"the video's frames are {w}x{h} ({w * h / 1e6:.1f} megapixels); "
                         f"this reader takes at most {limits.max_pixels / 1e6:.1f} megapixels "
                         f"and {limits.max_side} pixels a side: scale it down, e.g. "
                         "`ffmpeg -i IN -vf scale=-2:1080 OUT.mp4`")
    needed = math.ceil(fps * (last_second + 1))
    if stream.frames:
        needed = min(needed, int(stream.frames))
    if needed > limits.max_frames:
        raise VideoLimitError(f"reading the video's first {last_second + 1:g} s means decoding "
                         f"about {needed} frames ({fps:g} fps); this reader decodes at most "
                         f"{limits.max_frames}: lower its frame rate, e.g. "
                         "`ffmpeg -i IN -r 30 OUT.mp4`")


def _bounded(frames: Iterator[Any], limits: VideoLimits) -> Iterator[Any]:
    """The decoded frames, stopping with a VideoLimitError past ``limits`` (a stream whose
    frames outnumber its declared rate, or change size)."""
    for count, frame in enumerate(frames, 1):
        w, h = int(frame.width), int(frame.height)
        if count > limits.max_frames:
            raise VideoLimitError(f"the video holds more frames than it declares (over "
                             f"{limits.max_frames} before the last sampled second); "
                             "re-encode it at a constant frame rate, e.g. "
                             "`ffmpeg -i IN -r 30 OUT.mp4`")
        if w * h > limits.max_pixels or max(w, h) > limits.max_side:
            raise VideoLimitError(f"a frame of the video is {w}x{h}, over this reader's limit "
                             f"of {limits.max_pixels / 1e6:.1f} megapixels; scale it down, "
                             "e.g. `ffmpeg -i IN -vf scale=-2:1080 OUT.mp4`")
        yield frame


def open_video(path: str | os.PathLike[str]) -> Any:
    """PyAV's container of ``path``, opened without decoding a frame: FFmpeg's stream probe
    decodes the first frames to learn what the header left out, which for an 8192 x 8192
    h264 stream costs 160 MB before any limit can be checked; the probe here skips them
    (``skip_frame=all``; the decoder :func:`load_clip` opens later decodes every frame)."""
    av = require("av", "decoding videos")
    return av.open(os.fspath(path), options={"skip_frame": "all"})


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


def select_frames(frames: Iterator[Any], seconds: np.ndarray, fps: float,
                  convert: Callable[[Any], Any] = lambda f: f) -> tuple[list[int], list[Any], int]:
    """The frame on screen at each of ``seconds`` (sorted): (kept seconds, ``convert`` of
    their frames, how many picks differ from the index ``int(s * fps)`` the declared rate
    gives). Each frame is converted once, when it is picked, and not kept: a frame standing
    for several seconds is returned once per second (the same converted object)."""
    kept: list[int] = []
    picked: list[Any] = []
    converted: dict[int, Any] = {}  # index of the last picked frame -> its conversion

    def pick(item: tuple[int, float, float, Any]) -> Any:
        if item[0] not in converted:
            converted.clear()
            converted[item[0]] = convert(item[3])
        return converted[item[0]]

    mismatches = 0
    wanted = [int(s) for s in seconds]
    j = 0
    prev: tuple[int, float, float, Any] | None = None
    eps = 1e-6
    for item in _timed(frames, fps):
        _, t, _, _ = item
        while j < len(wanted) and prev is not None and wanted[j] < t - eps:
            kept.append(wanted[j])
            picked.append(pick(prev))
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
            picked.append(pick(prev))
            mismatches += index != int(wanted[j] * fps + eps)
            j += 1
    return kept, picked, mismatches


def load_clip(path: str | os.PathLike[str], start: float = 0.0,
              end: float | None = None, *, limits: VideoLimits = DEFAULT_LIMITS) -> Clip:
    """Decode the recipe's frames of ``path`` between ``start`` and ``end`` seconds
    (default: the whole video, at most its first 50 s), within ``limits``.

    Raises
    ------
    FileNotFoundError
        ``path`` names nothing.
    ValueError
        Not a regular file (a FIFO, a folder, a broken link: never opened), no video
        stream, no frame rate, no frame in the range, or a stream over ``limits`` (a codec,
        frame size or frame count: checked before decoding).
    """
    path = regular_file(path, "video file")
    with decoding(path, "video"), open_video(path) as container:
        if not container.streams.video:
            raise InvalidInputError("the file has no video stream")
        stream = container.streams.video[0]
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
        check_stream(stream, fps, float(seconds[-1]) if len(seconds) else 0.0, limits)
        # Frame threads each hold a frame in flight: above 1080p, slice threads only.
        small = stream.codec_context.width * stream.codec_context.height <= _EXACT_PIXELS
        stream.thread_type = "AUTO" if small else "SLICE"
        stream.codec_context.skip_frame = "DEFAULT"
        kept, rows, mismatches = select_frames(_bounded(container.decode(stream), limits),
                                               seconds, fps, frame_input)
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
