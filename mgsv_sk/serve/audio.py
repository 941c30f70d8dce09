"""A track's moment as a WAV file, and HTTP byte ranges over it.

The moment is read from the track's source audio (only the frames between start and end:
soundfile seeks in WAV, FLAC, OGG and MP3; other containers are decoded with PyAV up to the
moment's end) and written as 16-bit PCM at the file's own rate and channels, so the player
holds exactly the moment and its duration is ``end - start``.
"""

from __future__ import annotations

import io
import math
import os
import re

import numpy as np

from mgsv_sk._extras import require

__all__ = ["RangeNotSatisfiable", "audio_seconds", "moment_wav", "parse_range"]

_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.ASCII)


class RangeNotSatisfiable(ValueError):
    """A Range header that selects no byte of the file (HTTP 416)."""


def audio_seconds(path: str | os.PathLike[str]) -> float:
    """Duration of an audio file in seconds (from its header; decoded only when the
    container does not say)."""
    sf = require("soundfile", "reading audio files")
    try:
        info = sf.info(os.fspath(path))
        return float(info.frames) / float(info.samplerate)
    except (RuntimeError, sf.LibsndfileError):
        pass
    av = require("av", "decoding audio with PyAV")
    with av.open(os.fspath(path)) as container:
        if not container.streams.audio:
            raise ValueError(f"{path} has no audio stream")
        if container.duration:
            return float(container.duration) / 1e6
        stream = container.streams.audio[0]
        return float(sum(frame.samples for frame in container.decode(stream))) / float(
            stream.rate)


def _read_soundfile(path: str, start: float, end: float) -> tuple[np.ndarray, int] | None:
    sf = require("soundfile", "reading audio files")
    try:
        with sf.SoundFile(path) as fh:
            rate = int(fh.samplerate)
            first = min(int(round(start * rate)), fh.frames)
            count = max(0, min(int(round(end * rate)), fh.frames) - first)
            fh.seek(first)
            return fh.read(count, dtype="float32", always_2d=True), rate
    except (RuntimeError, sf.LibsndfileError):  # not a format libsndfile reads
        return None


def _read_av(path: str, start: float, end: float) -> tuple[np.ndarray, int]:
    av = require("av", "decoding audio with PyAV")
    with av.open(path) as container:
        if not container.streams.audio:
            raise ValueError(f"{path} has no audio stream")
        stream = container.streams.audio[0]
        rate = int(stream.rate or stream.codec_context.sample_rate)
        first, stop = int(round(start * rate)), int(round(end * rate))
        planar = av.AudioResampler(format="fltp")
        parts, decoded = [], 0
        for frame in container.decode(stream):
            for out in planar.resample(frame):
                block = out.to_ndarray().T  # (samples, channels)
                lo, hi = decoded, decoded + len(block)
                decoded = hi
                if hi > first and lo < stop:
                    parts.append(block[max(0, first - lo): stop - lo])
            if decoded >= stop:
                break
    channels = parts[0].shape[1] if parts else 1
    data = np.concatenate(parts) if parts else np.zeros((0, channels), np.float32)
    return data.astype(np.float32), rate


def moment_wav(path: str | os.PathLike[str], start: float, end: float) -> bytes:
    """The seconds ``[start, end)`` of an audio file as a 16-bit PCM WAV file.

    Raises
    ------
    ValueError
        The file holds no audio between ``start`` and ``end``.
    """
    if not (0 <= start < end and math.isfinite(end)):
        raise ValueError(f"a moment needs 0 <= start < end, got start={start}, end={end}")
    text = os.fspath(path)
    read = _read_soundfile(text, start, end)
    data, rate = read if read is not None else _read_av(text, start, end)
    if len(data) == 0:
        raise ValueError(f"the audio file holds no sound between {start:g} s and {end:g} s")
    sf = require("soundfile", "writing WAV files")
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(data, -1.0, 1.0), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _bounded(digits: str) -> int:
    """A byte position of the Range header; more than 18 digits (leading zeros aside)
    reads as 10**18."""
    significant = digits.lstrip("0") or "0"
    return int(significant) if len(significant) <= 18 else 10**18


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range ``(first, last)`` a ``Range`` header asks of a file of
    ``size`` bytes, or None to send the whole file (no header, another unit, several
    ranges, or a malformed header: RFC 9110 lets a server ignore those).

    Raises
    ------
    RangeNotSatisfiable
        The range starts past the end of the file, or is an empty suffix.

    Examples
    --------
    >>> parse_range("bytes=0-99", 1000), parse_range("bytes=900-", 1000)
    ((0, 99), (900, 999))
    >>> parse_range("bytes=-100", 1000), parse_range("bytes=0-5000", 1000)
    ((900, 999), (0, 999))
    >>> parse_range("bytes=" + "0" * 30 + "1-2", 1000)
    (1, 2)

    Numbers are read with a bound (never Python's unbounded ``int``): one of more than 18
    digits is past the end of any file.
    """
    if not header:
        return None
    match = _RANGE.match(header)
    if match is None:
        return None
    first_text, last_text = match.groups()
    if not first_text and not last_text:
        return None
    if not first_text:  # a suffix: the last N bytes
        length = _bounded(last_text)
        if length == 0:
            raise RangeNotSatisfiable("an empty suffix range selects no byte")
        return max(0, size - length), size - 1
    first = _bounded(first_text)
    last = _bounded(last_text) if last_text else size - 1
    if first >= size:
        raise RangeNotSatisfiable(f"the range starts at byte {first}, but the file has "
                                  f"{size} bytes")
    if last < first:
        return None  # invalid: ignored, the whole file is sent
    return first, min(last, size - 1)
