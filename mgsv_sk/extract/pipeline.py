"""Extract MGSV-EC features from media files: decode, encode in batches, write, resume.

:func:`extract_features` takes video and/or audio files, names each item by its file
stem (the ``video_id`` / ``music_id``), skips the items already written, encodes the rest
``batch`` rows at a time and writes each item atomically. A file that cannot be read is
logged with its path and the reason, skipped, and listed in the returned
:class:`ExtractionReport`; the others carry on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mgsv_sk.data._sources import _check_id, _progress
from mgsv_sk.data.spans import MAX_MUSIC_SNIPPETS, MAX_VIDEO_FRAMES
from mgsv_sk.errors import InvalidInputError

from .audio import load_track
from .encoders import Encoder
from .fbank import ast_inputs
from .recipe import window_mask
from .store import FeatureWriter, nonfinite_problem, open_writer
from .video import load_clip

__all__ = ["ExtractionReport", "encode_music_file", "encode_video_file", "extract_features",
           "media_ids"]

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aac", ".opus")


@dataclass
class ExtractionReport:
    """What :func:`extract_features` did: ids written now, ids already done (skipped),
    and ``failed``: path -> why it could not be read."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    output: Any = None

    def summary(self) -> str:
        """One paragraph: counts, then one line per failed file."""
        head = (f"{len(self.written)} item(s) extracted, {len(self.skipped)} already done, "
                f"{len(self.failed)} failed")
        return "\n".join([head, *(f"  {p}: {why}" for p, why in self.failed.items())])


def media_ids(paths: Iterable[str | os.PathLike[str]], kind: str) -> dict[str, Path]:
    """Map each file's id (its stem) to its path; raise one ValueError listing invalid or
    duplicate ids. A folder stands for the media files in it (sorted)."""
    suffixes = VIDEO_EXTENSIONS if kind == "video" else AUDIO_EXTENSIONS
    files: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            files.extend(sorted(f for f in path.iterdir() if f.suffix.lower() in suffixes))
        else:
            files.append(path)
    out: dict[str, Path] = {}
    problems = []
    for f in files:
        if f.stem in out:
            problems.append(f"{f} and {out[f.stem]} share the id {f.stem!r}")
            continue
        try:
            _check_id(f.stem, f"{kind}_id")
        except ValueError as exc:
            problems.append(f"{f}: {exc}")
            continue
        out[f.stem] = f
    if problems:
        raise InvalidInputError(f"the {kind} files cannot all be named by their stem (the id): "
                         + "; ".join(problems) + "; rename them")
    return out


def _video_inputs(path: Path) -> np.ndarray:
    return load_clip(path).pixels  # (F, 3, 224, 224)


def _music_inputs(path: Path) -> tuple[np.ndarray, np.ndarray]:
    track = load_track(path)
    mask = window_mask(track.duration)
    return ast_inputs(track.wave, np.flatnonzero(mask)), mask  # (S, 1024, 128), (96,)


def encode_video_file(path: str | os.PathLike[str], encoder: Encoder
                      ) -> tuple[np.ndarray, np.ndarray]:
    """One video's release features: (50, dim) float32 (padded) and its (50,) mask."""
    pixels = _video_inputs(Path(path))
    rows = np.zeros((MAX_VIDEO_FRAMES, encoder.dim), np.float32)
    rows[: len(pixels)] = encoder.encode(pixels)
    mask = np.zeros(MAX_VIDEO_FRAMES, np.float32)
    mask[: len(pixels)] = 1
    return rows, mask


def encode_music_file(path: str | os.PathLike[str], encoder: Encoder
                      ) -> tuple[np.ndarray, np.ndarray]:
    """One track's release features: (96, dim) float32 (0 where masked) and its mask."""
    inputs, mask = _music_inputs(Path(path))
    rows = np.zeros((MAX_MUSIC_SNIPPETS, encoder.dim), np.float32)
    rows[mask > 0] = encoder.encode(inputs)
    return rows, mask


def _run(kind: str, items: dict[str, Path], encoder: Encoder, writer: FeatureWriter,
         batch: int, report: ExtractionReport, verbose: bool,
         prepare: Callable[[Path], tuple[np.ndarray, np.ndarray]]) -> None:
    todo = {k: p for k, p in items.items() if not writer.done(kind, k)}
    report.skipped.extend(k for k in items if k not in todo)
    bar = _progress(len(todo), verbose, f"extracting {kind}")
    pending: list[tuple[str, np.ndarray, np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        embedded = encoder.encode(np.concatenate([inputs for _, inputs, _ in pending]))
        lo = 0
        for key, inputs, mask in pending:
            rows = np.zeros((len(mask), encoder.dim), np.float32)
            rows[mask > 0] = embedded[lo: lo + len(inputs)]
            lo += len(inputs)
            why = nonfinite_problem(rows)
            if why is not None:  # a failure, never a stored row (nor "done" on a rerun)
                report.failed[str(items[key])] = f"the encoder's output {why}"
                logger.warning("%s %s: the encoder's output %s; skipped", kind, items[key], why)
                continue
            writer.write(kind, key, rows, mask)
            report.written.append(key)
        bar.update(len(pending))
        pending.clear()

    for key, path in todo.items():
        try:
            inputs, mask = prepare(path)
            why = nonfinite_problem(inputs)
            if why is not None:
                raise InvalidInputError(f"the decoded inputs {why}")
        except Exception as exc:  # a damaged or foreign file: name it, skip it, carry on
            why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            report.failed[str(path)] = why
            logger.warning("cannot read %s %s (%s); skipped", kind, path, why)
            bar.update(1)
            continue
        pending.append((key, inputs, mask))
        if sum(len(i) for _, i, _ in pending) >= batch:
            flush()
    flush()
    bar.close()


def _video_prepare(path: Path) -> tuple[np.ndarray, np.ndarray]:
    pixels = _video_inputs(path)
    mask = np.zeros(MAX_VIDEO_FRAMES, np.float32)
    mask[: len(pixels)] = 1
    return pixels, mask


def extract_features(
    out: str | os.PathLike[str],
    *,
    videos: Sequence[str | os.PathLike[str]] = (),
    music: Sequence[str | os.PathLike[str]] = (),
    video_encoder: Encoder | None = None,
    music_encoder: Encoder | None = None,
    layout: str = "tree",
    batch: int = 64,
    verbose: bool = False,
) -> ExtractionReport:
    """Extract the release's features of video and audio files into ``out``.

    Parameters
    ----------
    out : path
        ``layout="tree"``: the release root (``features/Kuai_feature/...`` under it);
        ``layout="packed"``: the packed store to write (merged with what it holds).
    videos, music : sequences of paths
        Media files, or folders of them; each item's id is its file's stem.
    video_encoder, music_encoder : Encoder
        E.g. ``ClipImageEncoder.from_pretrained()`` / ``AstEncoder.from_pretrained()``, or
        their onnxruntime twins. Required when the matching files are given.
    layout : {"tree", "packed"}
    batch : int
        Encoder inputs (frames, or music windows) gathered before one encode call.
    verbose : bool
        Progress bars.

    Returns
    -------
    ExtractionReport
        Ids written and skipped, failed files with the reason; ``output`` is the tree
        root or the opened :class:`mgsv_sk.PackedFeatures`.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InvalidInputError(f"batch must be a positive integer, got {batch!r}")
    video_items = media_ids(videos, "video")
    music_items = media_ids(music, "music")
    for items, enc, name in ((video_items, video_encoder, "video_encoder"),
                             (music_items, music_encoder, "music_encoder")):
        if items and enc is None:
            raise InvalidInputError(f"{name} is required to extract these files: pass e.g. "
                             f"{'ClipImageEncoder' if name[0] == 'v' else 'AstEncoder'}"
                             ".from_pretrained() from mgsv_sk.extract")
    writer = open_writer(out, layout)
    writer.note_sources("music", music_items)
    report = ExtractionReport()
    if video_items and video_encoder is not None:
        _run("video", video_items, video_encoder, writer, batch, report, verbose, _video_prepare)
    if music_items and music_encoder is not None:
        _run("music", music_items, music_encoder, writer, batch, report, verbose, _music_inputs)
    report.output = writer.finish()
    logger.info("%s", report.summary())
    if report.failed:
        logger.warning("%d file(s) could not be read:\n%s", len(report.failed),
                       report.summary())
    return report
