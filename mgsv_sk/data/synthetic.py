"""Synthetic MGSV-EC data with a planted, learnable signal, in several worlds.

The real features are not shipped, so tests, examples and benchmarks run on data made
here, in exactly the release layout and with the real split's statistics (MGSV.md §2,
calibrated on the MGSV-EC val annotations): videos 5-50 s (mean about 23 s), tracks
30-240 s (mean about 140 s), moment length = video length, about a third of the
moments at 0 s, the rest skewed towards the start of the track, and the release's
category mix.

What every world shares (all maps linear, shared by every split through ``world_seed``):

1. **Tracks.** Track ``m`` belongs to one of ``n_genres`` genres and has a style vector
   ``z_m = 0.7 g_genre + 0.7 e`` (so tracks of a genre are confusable). It is cut into
   sections of 7.5-20 s, each playing one of 4 motifs of the track (verse, chorus, ...
   repeat, so a moment is not identified by one snippet). Snippet ``j`` has the latent
   ``a_j = motif + 0.3 e`` and the feature ``A_style z_m + A_motif a_j + noise``.
2. **Videos.** Video ``v`` uses track ``m`` from ``s`` to ``s + L``. Its style is a noisy
   copy ``y_v = z_m + tau e`` (retrieval signal, tau = ``style_noise``); every frame
   carries ``B_style y_v`` plus a category direction, a per-video distractor and noise.

Where the **grounding** signal lives is what the ``world`` parameter chooses, so that no
design of moment head is flattered by the data it is measured on:

``"aligned"`` (default)
    Frame ``t`` (1 fps) *sees the music playing at* ``s + t``: it carries that snippet's
    motif latent through ``B_motif``. Grounding is finding where in the track the frames'
    motif sequence is playing: temporal alignment.
``"signature"``
    No alignment in time: every frame carries the motif latent of a snippet drawn at
    random from inside the moment (cuts of a video are not synchronised with its music),
    at 1.5 times the "aligned" strength, and tracks have 8 motifs instead of 4, so the
    moment's bag of motifs, its *signature*, says where it is; the order of the frames
    says nothing.
``"hook"``
    A track-level prior: every track has a hook (a chorus) that recurs 2-3 times, and the
    hook's snippets share a world-wide "hook" direction in the music features (louder,
    fuller). Moments that do not start at 0 s start on an occurrence of the hook (the
    first one more often) give or take a second; the frames carry the motifs they play
    over only weakly (a third of the "aligned" strength). Grounding is mostly knowing
    which part of a track people use.
``"noisy"``
    The "signature" world's moments (a bag of motifs, no alignment in time) under heavy
    frame-level noise: every frame also carries its own draw of style jitter, and the
    frame noise is 3 times ``feature_noise``. Tracks draw their motifs from one
    world-wide vocabulary, so a moment's signature locates it inside its track without
    naming the track: retrieval rests on the noisy style. Meant with few tracks and many videos per
    track (the benchmark's 10 per track): a model can fit the training tracks' quirks far
    more easily than learn the style maps, which is what retrieval on tracks never seen
    in training needs. It shows retrieval overfitting that the other worlds hide.
``"crowded"``
    A catalogue crowded with near-duplicates: tracks come in families of about
    ``_CROWD_FAMILY`` that share one style and one motif palette, each track a small
    variation of both (a remix, a cover, the same library cue re-cut). Videos see their
    music in time, as in "aligned", with less style noise, so the family is easy and the
    track within it is the task: retrieval must tell neighbours apart.

In every world a linear model gets part of both tasks (:class:`mgsv_sk.RidgeGrounder`;
``tests/test_datasets.py::test_every_world_is_learnable_by_a_linear_model`` checks that
the trivial ``[0, video duration]`` predictor is far below it on mIoU), the trivial
predictor only the moments at 0 s.
"""

from __future__ import annotations

import os
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mgsv_sk.data._schema import ANNOTATION_COLUMNS
from mgsv_sk.data.features import FeatureSource, FeatureTree, InMemoryFeatures
from mgsv_sk.data.spans import MAX_MUSIC_SNIPPETS, MAX_VIDEO_FRAMES, SNIPPET_HOP_SECONDS
from mgsv_sk.errors import InvalidInputError, InvalidTypeError

__all__ = ["CATEGORY_SHARES", "SyntheticMGSV", "WORLDS", "make_synthetic_mgsv"]

#: The planted structures ``make_synthetic_mgsv(world=...)`` can make (module docstring).
WORLDS: tuple[str, ...] = ("aligned", "signature", "hook", "noisy", "crowded")

#: Category shares of the MGSV-EC val split (rounded; the long tail lumped into "Other").
CATEGORY_SHARES: dict[str, float] = {
    "Fashion": 0.437,
    "Games": 0.116,
    "Home Furnishings": 0.094,
    "Food": 0.070,
    "Beauty": 0.047,
    "High-tech Gadgets": 0.042,
    "Agriculture": 0.041,
    "Cars": 0.025,
    "Lifestyle": 0.019,
    "Health": 0.019,
    "Public News": 0.018,
    "Parenting": 0.017,
    "Other": 0.055,
}

_LATENT = 16
_MOTIFS = 4
_SECTION_SNIPPETS = (3, 9)  # a section lasts 3-8 snippets (7.5-20 s)
_START_AT_ZERO = 0.3
_HOOK_SNIPPETS = (4, 7)  # a hook lasts 4-6 snippets (10-15 s)
_HOOK_STRENGTH = 1.5  # scale of the world's hook direction in hook snippets
_HOOK_FIRST = 0.6  # share of hook moments that start on the first occurrence
_HOOK_MOTIF_SCALE = 1 / 3  # frames' motif strength in the hook world
_SIGNATURE_MOTIF_SCALE = 1.5  # and in the signature world (no alignment to lean on)
_SIGNATURE_MOTIFS = 8  # more motifs per track: a moment's bag of motifs is distinctive
_NOISY_VOCABULARY = 24  # the noisy world's motifs, shared by every track
_NOISY_FRAME_NOISE = 3.0  # the noisy world's frame noise, in units of feature_noise
_STYLE_NOISE = {"noisy": 1.1, "crowded": 0.8}  # a world's own style_noise (1.8 elsewhere)
_CROWD_FAMILY = 10  # tracks per family of near-duplicates in the crowded world
_CROWD_VARIATION = 0.25  # a track's own share of its style and motifs (std of the latent)
_NOISY_STYLE_JITTER = 1.0  # and its per-frame style jitter (std of the latent)
_MOTIF_SCALE = {"aligned": 1.0, "signature": _SIGNATURE_MOTIF_SCALE, "hook": _HOOK_MOTIF_SCALE,
                "noisy": _SIGNATURE_MOTIF_SCALE, "crowded": 1.0}
_UNALIGNED = ("signature", "noisy")  # frames drawn anywhere inside the moment


@dataclass
class SyntheticMGSV:
    """A synthetic split: the annotation frame and where its features live."""

    frame: pd.DataFrame
    features: FeatureSource
    root: Path | None = None

    @property
    def csv_path(self) -> Path | None:
        split = self.frame.attrs.get("split", "train")
        return None if self.root is None else _csv_path(self.root, split)


@dataclass(frozen=True)
class _World:
    """The fixed linear maps from latents to features, shared by every split."""

    music_style: np.ndarray
    music_motif: np.ndarray
    video_style: np.ndarray
    video_motif: np.ndarray
    video_category: np.ndarray
    video_distractor: np.ndarray
    music_hook: np.ndarray
    motif_vocabulary: np.ndarray
    genres: np.ndarray
    categories: np.ndarray


def _make_world(seed: int, n_genres: int, video_dim: int, music_dim: int) -> _World:
    rng = np.random.default_rng(seed)

    def proj(dim: int) -> np.ndarray:
        return rng.standard_normal((_LATENT, dim)) / np.sqrt(_LATENT)

    return _World(
        music_style=proj(music_dim),
        music_motif=proj(music_dim),
        video_style=proj(video_dim),
        video_motif=proj(video_dim),
        video_category=proj(video_dim),
        video_distractor=proj(video_dim),
        genres=rng.standard_normal((n_genres, _LATENT)),
        categories=rng.standard_normal((len(CATEGORY_SHARES), _LATENT)),
        # drawn last, so the maps of the other worlds are those of earlier releases
        music_hook=rng.standard_normal(music_dim) / np.sqrt(music_dim) * np.sqrt(_LATENT),
        motif_vocabulary=rng.standard_normal((_NOISY_VOCABULARY, _LATENT)),
    )


def _track_ids(rng: np.random.Generator, n: int) -> list[str]:
    # Shaped like the release's ids ("7+5x4mjjeiubm49fg"), unique within the split.
    alphabet = np.array(list(string.ascii_lowercase + string.digits))
    out: set[str] = set()
    ids: list[str] = []
    while len(ids) < n:
        key = f"{rng.integers(1, 10)}+" + "".join(rng.choice(alphabet, 15))
        if key not in out:
            out.add(key)
            ids.append(key)
    return ids


def _sections(rng: np.random.Generator, n_snippets: int, n_motifs: int = _MOTIFS) -> np.ndarray:
    """Motif index of every snippet: short sections, neighbours differ."""
    motif = np.empty(n_snippets, dtype=np.int64)
    pos, prev = 0, -1
    while pos < n_snippets:
        length = int(rng.integers(*_SECTION_SNIPPETS))
        choice = int(rng.integers(0, n_motifs - 1)) if prev >= 0 else int(rng.integers(0, n_motifs))
        if prev >= 0 and choice >= prev:
            choice += 1
        motif[pos : pos + length] = choice
        pos, prev = pos + length, choice
    return motif


def _hooks(rng: np.random.Generator, n_snippets: int) -> tuple[list[int], int]:
    """First snippets of 2-3 non-overlapping occurrences of a track's hook (sorted) and
    its length in snippets."""
    length = int(rng.integers(*_HOOK_SNIPPETS))
    wanted = int(rng.integers(2, 4))
    starts: list[int] = []
    for _ in range(50):
        if len(starts) == wanted:
            break
        first = int(rng.integers(0, max(1, n_snippets - length)))
        if all(abs(first - other) >= length + 2 for other in starts):
            starts.append(first)
    return sorted(starts), length


@dataclass(frozen=True)
class _Tracks:
    """The tracks of one split: ids, durations, style latents, snippet features, the
    motif latents the videos are drawn from, and (the "hook" world) each hook's snippets."""

    ids: list[str]
    durations: np.ndarray
    styles: np.ndarray
    music: dict[str, np.ndarray]
    motif_latents: list[np.ndarray]
    hook_starts: list[list[int]]


def _make_tracks(rng: np.random.Generator, world_maps: _World, world: str, n_tracks: int,
                 n_genres: int, music_dim: int, motif_strength: float,
                 feature_noise: float) -> _Tracks:
    f32 = np.float32
    music_ids = _track_ids(rng, n_tracks)
    durations = np.round(30.0 + 209.9 * rng.beta(0.9, 0.8, n_tracks), 3)
    genre = rng.integers(0, n_genres, n_tracks)
    styles = 0.7 * world_maps.genres[genre] + 0.7 * rng.standard_normal((n_tracks, _LATENT))
    family_palettes: np.ndarray | None = None
    if world == "crowded":  # families share a style and a palette; each track varies both
        family = rng.integers(0, max(1, n_tracks // _CROWD_FAMILY), n_tracks)
        styles = styles[family] + _CROWD_VARIATION * rng.standard_normal((n_tracks, _LATENT))
        family_palettes = rng.standard_normal((n_tracks, _MOTIFS, _LATENT))[family]
    music: dict[str, np.ndarray] = {}
    motif_latents: list[np.ndarray] = []
    hook_starts: list[list[int]] = []
    for m in range(n_tracks):
        n_snip = min(MAX_MUSIC_SNIPPETS, int(durations[m] // SNIPPET_HOP_SECONDS) + 1)
        n_motifs = _SIGNATURE_MOTIFS if world in _UNALIGNED else _MOTIFS
        palette = rng.standard_normal((n_motifs, _LATENT))
        if family_palettes is not None:
            palette = family_palettes[m] + _CROWD_VARIATION * palette
        if world == "noisy":  # motifs from one world-wide vocabulary: a moment's signature
            # locates it in its track but says little about which track it is
            palette = world_maps.motif_vocabulary[
                rng.choice(_NOISY_VOCABULARY, n_motifs, replace=False)]
        sections = _sections(rng, n_snip, n_motifs)
        hook = np.zeros(n_snip)
        if world == "hook":  # the hook: one more motif, recurring
            palette = np.vstack([palette, rng.standard_normal((1, _LATENT))])
            firsts, length = _hooks(rng, n_snip)
            for first in firsts:
                sections[first : first + length] = _MOTIFS
                hook[first : first + length] = 1.0
            hook_starts.append(firsts)
        latent = motif_strength * palette[sections]
        latent = latent + 0.3 * rng.standard_normal((n_snip, _LATENT))
        motif_latents.append(latent)
        feat = styles[m] @ world_maps.music_style + latent @ world_maps.music_motif
        feat = feat + _HOOK_STRENGTH * hook[:, None] * world_maps.music_hook
        feat = feat + feature_noise * rng.standard_normal((n_snip, music_dim))
        music[music_ids[m]] = feat.astype(f32)
    return _Tracks(music_ids, durations, styles, music, motif_latents, hook_starts)


def _make_videos(rng: np.random.Generator, world_maps: _World, world: str, tracks: _Tracks,
                 track_of: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                 category: np.ndarray, random_state: int, style_noise: float,
                 feature_noise: float, video_dim: int) -> tuple[list[str], dict[str, np.ndarray]]:
    """Each video's frames: its track's style and the motifs of its moment, in order (or
    unordered, in the worlds without alignment), plus category, distractor and noise."""
    f32 = np.float32
    n_videos = len(track_of)
    styles, motif_latents = tracks.styles, tracks.motif_latents
    video_base = 10**11 + int(random_state % 9_000) * 10**7
    video_ids = [str(video_base + i) for i in range(n_videos)]
    videos: dict[str, np.ndarray] = {}
    for v in range(n_videos):
        m = track_of[v]
        n_frames = min(MAX_VIDEO_FRAMES, int(np.floor(lengths[v])) + 1)
        last = len(motif_latents[m]) - 1
        if world in _UNALIGNED:  # frames show random moments of the moment, unordered
            t = starts[v] + rng.uniform(0.0, lengths[v], n_frames)
        else:
            t = starts[v] + np.arange(n_frames)
        snip = np.clip(np.rint(t / SNIPPET_HOP_SECONDS).astype(int), 0, last)
        motif = motif_latents[m][snip] * _MOTIF_SCALE[world]
        style = styles[m] + style_noise * rng.standard_normal(_LATENT)
        distractor = rng.standard_normal(_LATENT)
        feat = (
            style @ world_maps.video_style
            + motif @ world_maps.video_motif
            + world_maps.categories[category[v]] @ world_maps.video_category
            + distractor @ world_maps.video_distractor
        )
        frame_noise = feature_noise
        if world == "noisy":  # every frame strays from the video's style on its own
            jitter = _NOISY_STYLE_JITTER * rng.standard_normal((n_frames, _LATENT))
            feat = feat + jitter @ world_maps.video_style
            frame_noise = _NOISY_FRAME_NOISE * feature_noise
        feat = feat + frame_noise * rng.standard_normal((n_frames, video_dim))
        videos[video_ids[v]] = feat.astype(f32)
    return video_ids, videos


def _annotation_frame(rng: np.random.Generator, video_ids: list[str], track_ids: list[str],
                      lengths: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                      track_seconds: np.ndarray, categories: list[str]) -> pd.DataFrame:
    """The 16 MGSV-EC columns of the videos, ids as strings."""
    n_videos = len(video_ids)
    frame = pd.DataFrame(
        {
            "video_id": video_ids,
            "music_id": track_ids,
            "video_start": 0.0,
            "video_end": lengths,
            "music_start": starts,
            "music_end": ends,
            "music_total_duration": track_seconds,
            "video_segment_duration": lengths,
            "music_segment_duration": np.round(ends - starts, 3),
            "music_path": [f"synthetic/{m}.mp3" for m in track_ids],
            "video_total_duration": np.round(lengths + rng.uniform(0, 1.0, n_videos), 3),
            "video_width": 1080,
            "video_height": 1920,
            "video_total_frames": np.round(lengths * 30).astype(np.int64),
            "video_frame_rate": 30,
            "video_category": categories,
        },
        columns=list(ANNOTATION_COLUMNS),
    )
    frame["video_id"] = frame["video_id"].astype(object)
    frame["music_id"] = frame["music_id"].astype(object)
    return frame


def make_synthetic_mgsv(
    n_videos: int = 2000,
    n_tracks: int = 500,
    *,
    world: str = "aligned",
    random_state: int = 0,
    split: str = "train",
    path: str | os.PathLike[str] | None = None,
    style_noise: float | None = None,
    feature_noise: float = 1.0,
    motif_strength: float = 1.0,
    n_genres: int = 12,
    world_seed: int = 2025,
    video_dim: int = 512,
    music_dim: int = 768,
) -> SyntheticMGSV:
    """Make a synthetic MGSV-EC split, in memory or written in the release layout.

    Parameters
    ----------
    n_videos, n_tracks : int
        Rows and distinct tracks (each track used by at least one video when
        ``n_tracks <= n_videos``; val/test style splits use ``n_tracks == n_videos``).
    world : {"aligned", "signature", "hook", "noisy", "crowded"}
        Where the grounding signal lives (module docstring); the same world for every
        split of one set.
    random_state : int
        Seed of this split; use different seeds for train and test.
    split : str
        ``"train"``, ``"val"`` or ``"test"``: names the CSV when writing.
    path : path, optional
        When given, write ``dataset/MGSV-EC/{split}_data.csv`` and the ``.pt`` feature
        tree under it (the release layout) and return a :class:`FeatureTree` on it.
    style_noise, feature_noise : float
        Difficulty: how far a video's style strays from its track's (None: the world's
        default, 1.8; 1.1 in the "noisy" world, whose frames carry their own noise on
        top; 0.8 in the "crowded" one, whose neighbours differ by little), and the
        feature noise. Defaults give a task a linear model half solves.
    motif_strength : float
        Scale of the motif latents (the grounding signal) against the noise.
    world_seed : int
        Seed of the latent-to-feature maps; keep it equal across the splits of one set.

    Returns
    -------
    SyntheticMGSV
        ``frame`` (16 MGSV-EC columns, ids as strings) and ``features``.

    Examples
    --------
    >>> data = make_synthetic_mgsv(20, 5, random_state=1)
    >>> data.frame.shape, data.features.video(data.frame.video_id[0]).shape[1]
    ((20, 16), 512)
    """
    for name, value in (("n_videos", n_videos), ("n_tracks", n_tracks)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise InvalidTypeError(f"{name} must be an integer, got {value!r}")
    if n_videos < 1 or n_tracks < 1:
        raise InvalidInputError(f"n_videos and n_tracks must be >= 1, got {n_videos} and "
                                f"{n_tracks}")
    if world not in WORLDS:
        raise InvalidInputError(f"world must be one of {WORLDS}, got {world!r}")
    if style_noise is None:
        style_noise = _STYLE_NOISE.get(world, 1.8)
    rng = np.random.default_rng(random_state)
    world_maps = _make_world(world_seed, n_genres, video_dim, music_dim)

    tracks = _make_tracks(rng, world_maps, world, n_tracks, n_genres, music_dim,
                          motif_strength, feature_noise)
    music_ids, durations, music = tracks.ids, tracks.durations, tracks.music
    hook_starts = tracks.hook_starts

    # Every track gets a video first, the rest are drawn at random.
    track_of = np.concatenate(
        [rng.permutation(n_tracks)[: min(n_tracks, n_videos)],
         rng.integers(0, n_tracks, max(0, n_videos - n_tracks))]
    )
    rng.shuffle(track_of)
    cat_names = list(CATEGORY_SHARES)
    shares = np.array(list(CATEGORY_SHARES.values()))
    category = rng.choice(len(cat_names), n_videos, p=shares / shares.sum())
    lengths = np.clip(rng.gamma(4.4, 5.2, n_videos), 5.0, 49.5)
    lengths = np.round(np.minimum(lengths, durations[track_of] - 0.5), 3)
    room = durations[track_of] - lengths
    at_zero = rng.random(n_videos) < _START_AT_ZERO
    starts = np.where(at_zero, 0.0, np.floor(room * rng.beta(0.8, 2.6, n_videos) * 1000) / 1000)
    if world == "hook":  # moments not at 0 s start on an occurrence of the hook
        for v in np.flatnonzero(~at_zero).tolist():
            firsts = hook_starts[track_of[v]] or [0]
            pick = 0 if rng.random() < _HOOK_FIRST or len(firsts) == 1 else int(
                rng.integers(1, len(firsts)))
            start = firsts[pick] * SNIPPET_HOP_SECONDS + rng.uniform(-1.0, 1.0)
            starts[v] = np.floor(np.clip(start, 0.0, room[v]) * 1000) / 1000
    ends = np.round(starts + lengths, 3)

    video_ids, videos = _make_videos(rng, world_maps, world, tracks, track_of, starts,
                                     lengths, category, random_state, style_noise,
                                     feature_noise, video_dim)
    frame = _annotation_frame(rng, video_ids, [music_ids[m] for m in track_of], lengths,
                              starts, ends, durations[track_of],
                              [cat_names[c] for c in category])
    frame.attrs["split"] = split
    if path is None:
        return SyntheticMGSV(frame, InMemoryFeatures(videos, music))
    root = Path(path)
    write_release_layout(root, split, frame, videos, music)
    return SyntheticMGSV(frame, FeatureTree(root), root)


def _csv_path(root: Path, split: str) -> Path:
    return root / "dataset" / "MGSV-EC" / f"{split}_data.csv"


def write_release_layout(
    root: str | os.PathLike[str],
    split: str,
    frame: pd.DataFrame,
    videos: dict[str, np.ndarray],
    music: dict[str, np.ndarray],
) -> None:
    """Write a split as the MGSV-EC release does: the CSV and padded ``.pt`` files + masks."""
    import torch

    root = Path(root)
    csv = _csv_path(root, split)
    csv.parent.mkdir(parents=True, exist_ok=True)
    base = root / "features" / "Kuai_feature"
    dirs = {
        "vf": base / "vit_feature1" / "vit_feature",
        "vm": base / "vit_feature1" / "vit_mask",
        "mf": base / "ast_feature2p5" / "ast_feature",
        "mm": base / "ast_feature2p5" / "ast_mask",
    }
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)

    def save(items: dict[str, np.ndarray], rows: int, feat_dir: Path, mask_dir: Path) -> None:
        for key, arr in items.items():
            padded = np.zeros((rows, arr.shape[1]), np.float32)
            padded[: len(arr)] = arr
            mask = np.zeros(rows, np.float32)
            mask[: len(arr)] = 1.0
            torch.save(torch.from_numpy(padded), feat_dir / f"{key}.pt")
            torch.save(torch.from_numpy(mask), mask_dir / f"{key}.pt")

    save(videos, MAX_VIDEO_FRAMES, dirs["vf"], dirs["vm"])
    save(music, MAX_MUSIC_SNIPPETS, dirs["mf"], dirs["mm"])
    tmp = csv.with_suffix(".csv.tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, csv)  # the CSV last: a split is complete once its CSV exists
