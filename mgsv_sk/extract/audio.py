"""Decode a music file to the recipe's waveform: channel 0, 16 kHz, 240 s (numpy).

soundfile reads WAV, FLAC, OGG and MP3 (libsndfile >= 1.1); any other container (m4a,
aac, opus in mp4, a video's sound track...) is decoded with PyAV. The resampler is a
band-limited windowed-sinc interpolator (Hann window, 6 zero crossings, roll-off 0.99),
the usual default of audio toolkits, written in numpy.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from mgsv_sk._extras import require
from mgsv_sk.data.spans import MAX_MUSIC_SECONDS
from mgsv_sk.errors import InvalidInputError
from mgsv_sk.files._paths import regular_file

from .recipe import SAMPLE_RATE

__all__ = ["Track", "load_track", "resample"]

_TRACK_SAMPLES = int(MAX_MUSIC_SECONDS * SAMPLE_RATE)


@dataclass(frozen=True)
class Track:
    """A decoded track: ``wave`` (16 kHz mono float32, exactly 240 s: zero-padded or cut)
    and ``duration`` (seconds of the whole file, before padding or cutting)."""

    wave: np.ndarray
    duration: float


def _sinc_kernel(orig: int, new: int, zeros: int = 6, rolloff: float = 0.99
                 ) -> tuple[np.ndarray, int]:
    """Polyphase kernel (new, 2 * width + orig) of the windowed-sinc resampler."""
    base = min(orig, new) * rolloff
    width = math.ceil(zeros * orig / base)
    idx = np.arange(-width, width + orig, dtype=np.float64)[None, :] / orig
    t = (np.arange(0, -new, -1, dtype=np.float64)[:, None] / new + idx) * base
    t = np.clip(t, -zeros, zeros)
    window = np.cos(t * math.pi / zeros / 2) ** 2
    kernel = np.sinc(t) * window * (base / orig)
    return kernel, width


def resample(wave: np.ndarray, orig_rate: int, new_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a mono signal, float32; ``ceil(len * new / orig)`` samples.

    Examples
    --------
    >>> resample(np.ones(441, np.float32), 44_100).shape
    (160,)
    """
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    if orig_rate == new_rate:
        return wave.copy()
    g = math.gcd(int(orig_rate), int(new_rate))
    orig, new = int(orig_rate) // g, int(new_rate) // g
    kernel, width = _sinc_kernel(orig, new)
    padded = np.pad(wave, (width, width + orig))
    blocks = np.lib.stride_tricks.sliding_window_view(padded, kernel.shape[1])[::orig]
    out = (blocks @ kernel.T.astype(np.float32)).reshape(-1)
    return out[: math.ceil(new * len(wave) / orig)].astype(np.float32)


def _decode_soundfile(path: str) -> tuple[np.ndarray, int, float] | None:
    sf = require("soundfile", "reading audio files")
    try:
        info = sf.info(path)
    except (RuntimeError, sf.LibsndfileError):  # not a format libsndfile reads
        return None
    limit = int(math.ceil(MAX_MUSIC_SECONDS * info.samplerate)) + 1
    data, rate = sf.read(path, frames=limit, dtype="float32", always_2d=True)
    return data[:, 0], int(rate), float(info.frames) / float(info.samplerate)


def _decode_av(path: str) -> tuple[np.ndarray, int, float]:
    av = require("av", "decoding audio with PyAV")
    with av.open(path) as container:
        if not container.streams.audio:
            raise InvalidInputError("the file has no audio stream")
        stream = container.streams.audio[0]
        rate = int(stream.rate or stream.codec_context.sample_rate)
        limit = int(math.ceil(MAX_MUSIC_SECONDS * rate)) + 1
        planar = av.AudioResampler(format="fltp")  # float, one row per channel
        parts, n = [], 0
        for frame in container.decode(stream):
            for out in planar.resample(frame):
                parts.append(out.to_ndarray()[0])
                n += parts[-1].shape[0]
            if n >= limit:
                break
        wave = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        # Decoded to the end: its length is the duration; else the container's.
        duration = len(wave) / rate
        if n >= limit and container.duration:
            duration = max(duration, float(container.duration) / 1e6)
    return wave.astype(np.float32), rate, duration


def load_track(path: str | os.PathLike[str]) -> Track:
    """Decode ``path`` (channel 0), resample to 16 kHz and pad or cut to 240 s.

    Raises
    ------
    FileNotFoundError
        ``path`` names nothing.
    ValueError
        Not a regular file (a FIFO, a folder, a broken link: never opened), no audio
        samples, or NaN / infinite samples (float WAV files can hold them).
    """
    text = os.fspath(regular_file(path, "audio file"))  # a FIFO is refused, never opened
    decoded = _decode_soundfile(text)
    wave, rate, duration = decoded if decoded is not None else _decode_av(text)
    if len(wave) == 0 or not duration > 0:
        raise InvalidInputError("the file holds no audio samples")
    if not rate > 0:
        raise InvalidInputError(f"the file declares a sample rate of {rate}")
    bad = ~np.isfinite(wave)
    if bad.any():  # a NaN would reach every window's features: refuse the file instead
        raise InvalidInputError(f"the file holds {int(bad.sum())} NaN or infinite sample(s) (first "
                         f"at {np.flatnonzero(bad)[0] / rate:.3f} s); re-encode it")
    wave = resample(wave[: int(math.ceil(MAX_MUSIC_SECONDS * rate))], rate)[:_TRACK_SAMPLES]
    return Track(np.pad(wave, (0, _TRACK_SAMPLES - len(wave))), duration)
