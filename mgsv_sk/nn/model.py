"""MaDe: the MGSV baseline, composed from the parts of this package (root of the leaf-to-root
reading order: layers -> encoders -> xpool -> detector -> model -> losses)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .config import MaDeConfig
from .detector import FOREGROUND, MomentDetector
from .encoders import TemporalEncoder
from .layers import check_masks, full_precision
from .xpool import XPool

MAX_LOGIT_SCALE = 100.0  # CLIP's cap on 1 / temperature


class VideoEncoding(NamedTuple):
    """Encoded videos: tokens [B, F, D] (padding zeroed), mask [B, F], unit-norm emb [B, D]."""

    tokens: Tensor
    mask: Tensor
    emb: Tensor


class MusicEncoding(NamedTuple):
    """Encoded tracks: tokens [U, S, D] (padding zeroed), mask [U, S], unit-norm emb [U, D]."""

    tokens: Tensor
    mask: Tensor
    emb: Tensor


class RetrievalScores(NamedTuple):
    """Cosine scores of every (video, track) pair, float32 [B, U].

    A score disabled by ``MaDeConfig.retrieval_scores`` is an empty [B, 0] tensor (never
    None, so the tuple always has the same structure); ``total`` sums the enabled ones.
    """

    dual: Tensor
    xpool: Tensor
    total: Tensor


class Grounding(NamedTuple):
    """Per-decoder-layer detector outputs, the last row final: spans [L, B, 2] as
    (center, width) in units of 240 s, fg_logits [L, B, 2] (index 0 = foreground), and the
    per-snippet evidence snippet_logits [B, S] (-inf on padding)."""

    spans: Tensor
    fg_logits: Tensor
    snippet_logits: Tensor


class MaDeOutput(NamedTuple):
    """Training forward: scores [B, U] (empty [B, 0] when disabled), spans and fg_logits
    [L, B, 2], snippet_logits [B, S], logit_scale (scalar, 1 / temperature)."""

    dual: Tensor
    xpool: Tensor
    spans: Tensor
    fg_logits: Tensor
    snippet_logits: Tensor
    logit_scale: Tensor


class MaDe(nn.Module):
    """Music grounding by short video: retrieval (dual + X-Pool) and moment detection.

    Video frames [B, F, 512] and track snippets [U, S, 768] are encoded separately
    (:class:`TemporalEncoder`); the retrieval score of a pair is cos(h(v), h0(M)) ("dual")
    plus cos(h(v), h1(M|v)) (:class:`XPool`); the moment of a video in a track comes from a
    single-query DETR (:class:`MomentDetector`). Masks are bool, True = valid; every video
    needs >= 1 valid frame and every track >= 1 valid snippet. Inputs may be padded to any
    length F <= ``max_frames``, S <= ``max_snippets``; padding does not change any output.

    Differences from the paper's public code (deliberate fixes):

    * the decoder query's position vector is a trained parameter (never trained there);
    * videos that share a track in a batch are not negatives of each other: scores are over
      the U unique tracks of the batch and music -> video InfoNCE is multi-positive
      (:func:`mgsv_sk.nn.losses.info_nce`); each shared track is also encoded only once;
    * each modality has its own position code in the detector memory (plus a learned
      modality-type embedding), so snippet positions do not shift with the video length;
    * no alignment loss (identically zero with one query);
    * the decoder query also encodes the video's length, and a per-snippet evidence head
      with its own loss gives the detector dense supervision (see
      :class:`~mgsv_sk.nn.detector.MomentDetector`);
    * X-Pool scores are computed in chunks of tracks from the layer-normed snippet states
      (the key and value projections moved to the video's side, exactly), never as a full
      [B, N, D] tensor;
    * the single-query decoder is computed exactly without generic self-attention or memory
      projections, and has no query/key projections for its (trivial) self-attention, so the
      parameter count is ~0.79 M below a generic 6-layer decoder.

    Implementation choices (speed on CPU, not in the paper):

    * the detector *encoder* has no dropout on attention weights (it would force SDPA's slow
      math path, ~3x the attention time); its residual and FFN dropout (0.1) remain, and the
      decoder keeps attention-weight dropout;
    * ``cfg.temporal_dropout`` acts on the residual branches of the temporal layers;
    * dropout masks come from 16-bit random draws (:func:`mgsv_sk.nn.layers.fast_dropout`);
    * attention softmax, scores and losses stay float32 under bf16 autocast.

    The temperature is parametrised as log(temperature) (init log 0.03) and 1 / temperature
    is capped at 100.
    """

    def __init__(self, cfg: MaDeConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg if cfg is not None else MaDeConfig()
        c = self.cfg
        self.video_encoder = TemporalEncoder(c.video_dim, c.max_frames, c)
        self.music_encoder = TemporalEncoder(c.music_dim, c.max_snippets, c)
        self.xpool = XPool(c) if c.use_xpool else None
        self.detector = MomentDetector(c)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(c.temperature_init)))

    # -- encoders -------------------------------------------------------------------------
    def encode_video(self, video: Tensor, video_mask: Tensor) -> VideoEncoding:
        """video [B, F, video_dim] float, video_mask [B, F] bool -> :class:`VideoEncoding`."""
        self._check_features(video, "video", self.cfg.video_dim)
        check_masks(video_mask, "video_mask", tuple(video.shape[:2]))
        tokens, emb = self.video_encoder(video, video_mask)
        return VideoEncoding(tokens, video_mask, emb)

    def encode_music(self, music: Tensor, music_mask: Tensor) -> MusicEncoding:
        """music [U, S, music_dim] float, music_mask [U, S] bool -> :class:`MusicEncoding`."""
        self._check_features(music, "music", self.cfg.music_dim)
        check_masks(music_mask, "music_mask", tuple(music.shape[:2]))
        tokens, emb = self.music_encoder(music, music_mask)
        return MusicEncoding(tokens, music_mask, emb)

    @staticmethod
    def _check_features(x: Tensor, name: str, dim: int) -> None:
        if x.ndim != 3 or x.shape[-1] != dim or x.shape[1] < 1:
            raise ValueError(f"{name} must have shape [batch, length >= 1, {dim}], "
                             f"got {tuple(x.shape)}")

    # -- heads ----------------------------------------------------------------------------
    def logit_scale(self) -> Tensor:
        """1 / temperature, a positive scalar capped at 100."""
        return torch.exp(-self.log_temperature).clamp(max=MAX_LOGIT_SCALE)

    def retrieval_scores(
        self, video_enc: VideoEncoding, music_enc: MusicEncoding, chunk: int = 64
    ) -> RetrievalScores:
        """Scores of all pairs, float32 [B, U]; X-Pool in chunks of ``chunk`` tracks."""
        v_emb, m_emb = video_enc.emb, music_enc.emb  # [B,D], [U,D], float32 unit-norm
        empty = v_emb.new_zeros(v_emb.shape[0], 0)  # [B,0]
        dual = xpool = empty
        enabled = []
        if self.cfg.use_dual:
            with full_precision(v_emb):  # float32 scores: bf16 would create ranking ties
                dual = v_emb.float() @ m_emb.float().T  # [B,U]
            enabled.append(dual)
        if self.xpool is not None:
            xpool = self.xpool.pairwise(v_emb, music_enc.tokens, music_enc.mask, chunk)
            enabled.append(xpool)
        total = enabled[0] if len(enabled) == 1 else enabled[0] + enabled[1]
        return RetrievalScores(dual, xpool, total)

    def ground(
        self, video_enc: VideoEncoding, music_enc: MusicEncoding, music_index: Tensor
    ) -> Grounding:
        """Moment of video b in track ``music_index[b]`` ([B] long into the U tracks)."""
        b, u = video_enc.emb.shape[0], music_enc.emb.shape[0]
        if music_index.dtype != torch.long or tuple(music_index.shape) != (b,):
            raise ValueError(f"music_index must be a long tensor of shape ({b},), got "
                             f"{music_index.dtype} {tuple(music_index.shape)}")
        if b and not (0 <= int(music_index.min()) and int(music_index.max()) < u):
            raise ValueError(f"music_index values must lie in [0, {u}), got "
                             f"[{int(music_index.min())}, {int(music_index.max())}]")
        # A track shared by several videos was encoded once; gather its tokens per video.
        music_tokens = music_enc.tokens[music_index]  # [U,S,D] -> [B,S,D]
        music_mask = music_enc.mask[music_index]  # [B,S]
        spans, fg_logits, snippet_logits = self.detector(
            video_enc.tokens, video_enc.mask, video_enc.emb, music_tokens, music_mask
        )
        return Grounding(spans, fg_logits, snippet_logits)

    @staticmethod
    def moment(grounding: Grounding) -> tuple[Tensor, Tensor]:
        """Final-layer prediction: (center, width) [B, 2] and foreground probability [B]."""
        confidence = grounding.fg_logits[-1].float().softmax(dim=-1)[:, FOREGROUND]
        return grounding.spans[-1], confidence

    # -- training forward -----------------------------------------------------------------
    def forward(
        self,
        video: Tensor,
        video_mask: Tensor,
        music: Tensor,
        music_mask: Tensor,
        music_index: Tensor,
    ) -> MaDeOutput:
        """Training forward over B videos and the U unique tracks of the batch.

        video [B, F, video_dim], video_mask [B, F] bool, music [U, S, music_dim],
        music_mask [U, S] bool, music_index [B] long (video b's track is music[music_index[b]])
        -> :class:`MaDeOutput`; feed it to :func:`mgsv_sk.nn.losses.made_losses`.
        """
        video_enc = self.encode_video(video, video_mask)
        music_enc = self.encode_music(music, music_mask)
        scores = self.retrieval_scores(video_enc, music_enc)
        grounding = self.ground(video_enc, music_enc, music_index)
        return MaDeOutput(
            dual=scores.dual,
            xpool=scores.xpool,
            spans=grounding.spans,
            fg_logits=grounding.fg_logits,
            snippet_logits=grounding.snippet_logits,
            logit_scale=self.logit_scale(),
        )


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
