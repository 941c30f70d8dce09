"""Kaldi-compatible log-mel filterbank and the 96 normalised AST inputs of a track, numpy.

Matches ``torchaudio.compliance.kaldi.fbank`` with the release's settings (16 kHz, 25 ms
frames every 10 ms, ``snip_edges``, per-frame DC removal, pre-emphasis 0.97, Hanning
window, 512-point FFT, power spectrum, 128 triangular mel bins from 20 Hz to 8 kHz on
Kaldi's mel scale, log floored at float32's epsilon, no dither, no energy), written from
Kaldi's definition in numpy so the torch-free runtime computes it too.

A window starts on a multiple of 2.5 s (250 frame shifts), so the frames of every window
are frames of the whole track: the track's filterbank is computed once and each window
is a slice of it (the test checks this against a per-window computation).
"""

from __future__ import annotations

import numpy as np

from mgsv_sk.data import as_array
from mgsv_sk.errors import InvalidInputError

from .recipe import (
    AST_MEAN,
    AST_STD,
    FBANK_FRAMES,
    FRAME_LENGTH,
    FRAME_SHIFT,
    MEL_BINS,
    SAMPLE_RATE,
    window_bounds,
)

__all__ = ["ast_inputs", "kaldi_fbank", "kaldi_mel_banks"]

_FFT = 512
_PREEMPHASIS = 0.97
_LOW_HZ = 20.0
_EPS = float(np.finfo(np.float32).eps)


def _mel(hz: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def kaldi_mel_banks(n_mels: int = MEL_BINS, sample_rate: int = SAMPLE_RATE,
                    n_fft: int = _FFT, low_hz: float = _LOW_HZ) -> np.ndarray:
    """Kaldi's triangular mel filters (triangles in mel space), shape (n_mels, n_fft//2 + 1);
    the Nyquist bin gets no weight, as in Kaldi.

    Examples
    --------
    >>> banks = kaldi_mel_banks()
    >>> banks.shape, bool((banks >= 0).all()), float(banks[:, -1].max())
    ((128, 257), True, 0.0)
    """
    half = n_fft // 2
    mel_low, mel_high = _mel(low_hz), _mel(sample_rate / 2)
    delta = (mel_high - mel_low) / (n_mels + 1)
    k = np.arange(n_mels, dtype=np.float64)[:, None]
    left, centre, right = mel_low + k * delta, mel_low + (k + 1) * delta, mel_low + (k + 2) * delta
    mel = _mel(np.arange(half) * sample_rate / n_fft)[None, :]
    up = (mel - left) / (centre - left)
    down = (right - mel) / (right - centre)
    banks = np.maximum(0.0, np.minimum(up, down))
    return np.pad(banks, ((0, 0), (0, 1)))


_BANKS = kaldi_mel_banks().T.astype(np.float32)  # (257, 128)
# Kaldi's "hanning" window is the symmetric Hann window (torch.hann_window(periodic=False)).
_WINDOW = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(FRAME_LENGTH) / (FRAME_LENGTH - 1))
           ).astype(np.float32)


def kaldi_fbank(wave: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Log-mel filterbank of a 16 kHz mono waveform, shape (frames, 128) float32, with
    ``frames = 1 + (len(wave) - 400) // 160`` (0 for a wave shorter than 25 ms).

    Examples
    --------
    >>> kaldi_fbank(np.zeros(16_000, np.float32)).shape
    (98, 128)
    """
    wave = as_array(wave, "wave", np.float32).reshape(-1)
    if not np.isfinite(wave).all():
        raise InvalidInputError(f"wave holds {int((~np.isfinite(wave)).sum())} NaN or infinite "
                                "sample(s) (as float32); re-encode the audio")
    n = 0 if len(wave) < FRAME_LENGTH else 1 + (len(wave) - FRAME_LENGTH) // FRAME_SHIFT
    out = np.empty((n, MEL_BINS), np.float32)
    if n == 0:  # shorter than one frame (numpy's window view would refuse it)
        return out
    frames_all = np.lib.stride_tricks.sliding_window_view(wave, FRAME_LENGTH)[::FRAME_SHIFT][:n]
    for lo in range(0, n, chunk):
        frames = frames_all[lo: lo + chunk].astype(np.float32)  # [T, 400]
        frames = frames - frames.mean(axis=1, keepdims=True)  # DC offset
        previous = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
        frames = (frames - _PREEMPHASIS * previous) * _WINDOW  # pre-emphasis, window
        power = np.abs(np.fft.rfft(frames, n=_FFT, axis=1)) ** 2  # [T, 257]
        out[lo: lo + chunk] = np.log(np.maximum(power.astype(np.float32) @ _BANKS, _EPS))
    return out


def ast_inputs(wave: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """The normalised AST inputs of the chosen windows of a track, (len(windows), 1024, 128).

    Parameters
    ----------
    wave : ndarray
        The track at 16 kHz, mono, padded or cut to 240 s (3,840,000 samples).
    windows : ndarray of int
        Window numbers (0..95); window k is centred at 2.5 k s and spans
        ``[max(0, c - 5), min(240, c + 5)]``.

    Returns
    -------
    ndarray
        float32: each window's filterbank, zero-padded or cut to 1024 frames, then
        ``(x + 4.2677393) / (2 * 4.5689974)`` (padding included, as AST's own extractor).
    """
    windows = as_array(windows, "windows")
    if windows.ndim != 1 or (windows.size and (
            not np.isfinite(windows).all() or (windows != np.round(windows)).any()
            or windows.min() < 0 or windows.max() >= len(window_bounds()))):
        raise InvalidInputError(f"windows must be window numbers 0..{len(window_bounds()) - 1} "
                                f"(a 1-D array of integers), got {windows!r}"[:300])
    windows = windows.astype(np.int64)
    out = np.zeros((len(windows), FBANK_FRAMES, MEL_BINS), np.float32)
    if len(windows):
        bounds = np.round(window_bounds()[windows] * SAMPLE_RATE).astype(np.int64)
        first = int(bounds[:, 0].min())
        track = kaldi_fbank(wave[first: int(bounds[:, 1].max())])
        for row, (lo, hi) in enumerate(bounds):
            n = min(1 + (int(hi - lo) - FRAME_LENGTH) // FRAME_SHIFT, FBANK_FRAMES)
            start = (int(lo) - first) // FRAME_SHIFT
            out[row, :n] = track[start: start + n]
    return (out - AST_MEAN) / np.float32(2 * AST_STD)
