"""The graphs of a bundle as small nn.Modules over *public* MaDe methods, and example inputs.

Each wrapper calls only ``encode_video``, ``encode_music``, ``xpool.snippet_states``,
``xpool.scores_from_states``, ``xpool.paired_from_states`` and ``ground``, so the moment
heads' internals may change without touching the export. Input and output names and
axes are those of :func:`mgsv_sk.export.manifest.graph_specs`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mgsv_sk.nn.model import MaDe, MusicEncoding, VideoEncoding
from mgsv_sk.nn.xpool import XPool

from .manifest import GraphSpec

__all__ = ["CHECK_SIZES", "EXPORT_SIZES", "WRAPPERS", "example_inputs"]


# -- graph wrappers: public MaDe methods only -------------------------------------------------
class _Graph(nn.Module):
    def __init__(self, model: MaDe) -> None:
        super().__init__()
        self.model = model

    @property
    def xpool(self) -> XPool:
        if self.model.xpool is None:
            raise ValueError("this graph needs the X-Pool score, which the model lacks")
        return self.model.xpool


def _keyed(model: MaDe) -> bool:
    """Whether a bundle of ``model`` stores the window head's track keys per snippet (the
    detector graph then takes them; bundles exported before store tokens, which their
    detector graph projects)."""
    return model.cfg.detector == "window"


class VideoEncoderGraph(_Graph):
    """video [B, F, 512], video_mask [B, F] -> video_tokens [B, F, D], video_emb [B, D]."""

    def forward(self, video: Tensor, video_mask: Tensor) -> tuple[Tensor, Tensor]:
        enc = self.model.encode_video(video, video_mask)
        return enc.tokens, enc.emb


class MusicEncoderGraph(_Graph):
    """music [U, S, 768], music_mask [U, S] -> tokens [U, S, D] (the window head: its track
    keys [U, S, D + 4]), emb [U, D] and, with X-Pool, snippet states [U, S, D] (what a
    catalogue caches per track)."""

    def forward(self, music: Tensor, music_mask: Tensor) -> tuple[Tensor, ...]:
        enc = self.model.encode_music(music, music_mask)
        rows = self.model.window_keys(enc) if _keyed(self.model) else enc.tokens
        if self.model.xpool is None:
            return rows, enc.emb
        return rows, enc.emb, self.xpool.snippet_states(enc.tokens)


class ScoreTracksGraph(_Graph):
    """Every (video, track) pair: video_emb [B, D], (music_emb [U, D]), snippet states
    [U, S, D], music_mask [U, S] -> score [B, U] = dual + X-Pool (the enabled ones)."""

    def forward(self, video_emb: Tensor, *args: Tensor) -> Tensor:
        if self.model.cfg.use_dual:
            music_emb, states, mask = args
            dual = video_emb @ music_emb.T  # [B,D] @ [D,U] -> [B,U]
            return dual + self.xpool.scores_from_states(video_emb, states, mask)
        states, mask = args
        return self.xpool.scores_from_states(video_emb, states, mask)


class ScorePairsGraph(_Graph):
    """Matched pairs: video_emb [B, D], (music_emb [B, D]), snippet states [B, S, D],
    music_mask [B, S] -> score [B]."""

    def forward(self, video_emb: Tensor, *args: Tensor) -> Tensor:
        if self.model.cfg.use_dual:
            music_emb, states, mask = args
            dual = (video_emb * music_emb).sum(dim=-1)  # [B]
            return dual + self.xpool.paired_from_states(video_emb, states, mask)
        states, mask = args
        return self.xpool.paired_from_states(video_emb, states, mask)


class DetectorGraph(_Graph):
    """Candidate moments of P (video, track) pairs.

    The window head: video tokens/mask/emb [V, ...] and video_seconds [V] of V videos, music
    keys [U, S, D + 4] and mask [U, S], music_index and video_index [P] (pair p: video
    video_index[p] in track music_index[p]; a video is projected once, whatever its pairs).
    DETR: video tokens/mask/emb [P, ...] per pair, music_index [P]. ->
    window_starts, window_ends [P, K] (seconds, inside the track), window_logits [P, K]
    (sigmoid = moment score, -inf = not a window), snippet_logits [P, S] (-inf on padding).
    The runtime picks the moments from the windows (``mgsv_sk.grounding.moments``)."""

    def forward(self, video_tokens: Tensor, video_mask: Tensor, video_emb: Tensor,
                music_tokens: Tensor, music_mask: Tensor, music_index: Tensor,
                video_index: Tensor | None = None, video_seconds: Tensor | None = None
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        video = VideoEncoding(video_tokens, video_mask, video_emb)
        # ground() reads the music embedding's length only (number of tracks); the window
        # head's rows are its track keys, never re-projected here
        music = MusicEncoding(music_tokens, music_mask, music_tokens[:, 0])
        keys = music_tokens if _keyed(self.model) else None
        g = self.model.ground(video, music, music_index, video_seconds, video_index, keys)
        return g.starts, g.ends, g.logits, g.snippet_logits


WRAPPERS: dict[str, Callable[[MaDe], nn.Module]] = {
    "video_encoder": VideoEncoderGraph,
    "music_encoder": MusicEncoderGraph,
    "score_tracks": ScoreTracksGraph,
    "score_pairs": ScorePairsGraph,
    "detector": DetectorGraph,
}


# -- example inputs -----------------------------------------------------------------------------
def _mask(lengths: Sequence[int]) -> Tensor:
    """[n, max(lengths)] bool, valid positions first."""
    return torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]


def example_inputs(spec: GraphSpec, sizes: dict[str, Any], dims: dict[str, int],
             gen: torch.Generator) -> tuple[Tensor, ...]:
    """Inputs for one graph. ``sizes``: batch, tracks, frames/snippets lengths per row."""
    frames, snippets = sizes["frames"], sizes["snippets"]
    b, u = len(frames), len(snippets)
    pairs = b + 2  # the window head's pairs: video 2i % b, some videos in several
    video_mask, music_mask = _mask(frames), _mask(snippets)
    pair_mask = music_mask[[i % u for i in range(b)]]  # track i % u for pair i
    out: list[Tensor] = []
    for t in spec.inputs:
        axes = {"batch": b, "tracks": u, "frames": int(video_mask.shape[1]),
                "snippets": int(music_mask.shape[1]), "videos": b, "pairs": pairs}
        shape = [axes[a] if isinstance(a, str) else a for a in t.shape]
        if t.name == "music_index":
            n = axes[str(t.shape[0])]
            out.append(torch.tensor([(i + 1) % u for i in range(n)], dtype=torch.long))
        elif t.name == "video_index":
            out.append(torch.tensor([(i * 2) % b for i in range(pairs)], dtype=torch.long))
        elif t.name == "video_seconds":  # about one second per frame, some over a track
            out.append(torch.tensor(frames, dtype=torch.float32) * 2.7 - 0.4)
        elif t.dtype == "bool":
            paired = t.shape[0] == "batch"
            out.append(video_mask if t.name == "video_mask"
                       else pair_mask if paired else music_mask)
        elif t.name.endswith("_emb"):
            x = torch.randn(*shape, generator=gen)
            out.append(x / x.norm(dim=-1, keepdim=True))
        else:
            x = torch.randn(*shape, generator=gen)
            if t.name in ("video_tokens", "music_tokens", "music_keys", "video", "music"):
                mask = (video_mask if t.name.startswith("video") else music_mask)
                x = x * mask[..., None]  # padding rows are zero, as the encoders give them
            out.append(x)
    return tuple(out)


#: Export with batch 3 and unequal lengths (a batch-1 example freezes the batch axis);
#: check on other shapes, batch 1 included.
EXPORT_SIZES = {"frames": [7, 4, 2], "snippets": [9, 5]}
CHECK_SIZES = ({"frames": [11, 1, 3, 9, 5], "snippets": [13, 2, 7]},
                {"frames": [4], "snippets": [6]})
