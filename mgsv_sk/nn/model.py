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
from .span_ops import cw_to_seconds
from .window import CONTENT_CHANNELS, WindowHead
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


class MemoryNegatives(NamedTuple):
    """A cross-batch memory's tracks offered as negatives: its buffers as they are
    (``music``, every slot, nothing copied) and ``rows`` [Q], the slots to score (filled,
    and not a track of the current batch). Gather with :meth:`tracks`, only what a score
    needs: the token buffer is the large part."""

    music: MusicEncoding
    rows: Tensor

    def tracks(self, rows: Tensor | None = None) -> MusicEncoding:
        """The slots ``rows`` (default: all of :attr:`rows`) as an encoding of their own,
        without the columns that are padding in all of them."""
        rows = self.rows if rows is None else rows
        mask = self.music.mask[rows]
        width = int(mask.any(dim=0).nonzero().max()) + 1
        return MusicEncoding(self.music.tokens[rows, :width], mask[:, :width],
                             self.music.emb[rows])


def _cosine(v_emb: Tensor, m_emb: Tensor) -> Tensor:
    """The dual score: cosine of unit-norm embeddings [B, D] x [U, D] -> float32 [B, U]."""
    with full_precision(v_emb):  # float32 scores: bf16 would create ranking ties
        return v_emb.float() @ m_emb.float().T


class RetrievalScores(NamedTuple):
    """Cosine scores of every (video, track) pair, float32 [B, U].

    A score disabled by ``MaDeConfig.retrieval_scores`` is an empty [B, 0] tensor (never
    None, so the tuple always has the same structure); ``total`` sums the enabled ones.
    """

    dual: Tensor
    xpool: Tensor
    total: Tensor


class Grounding(NamedTuple):
    """Candidate moments of B (video, track) pairs, the same structure for both heads.

    anchors, starts, ends [B, K] seconds (the window head: K candidates on its grid, refined
    starts; DETR: K = 1, its span); logits [B, K] float32, sigmoid = moment score, -inf on
    candidates that are not windows of the track; spans and fg_logits [L, B, 2] per DETR
    decoder layer, the last final ((center, width) in units of 240 s; index 0 of fg_logits =
    foreground), L = 0 for the window head; snippet_logits [B, S] per-snippet evidence (-inf
    on padding).
    """

    anchors: Tensor
    starts: Tensor
    ends: Tensor
    logits: Tensor
    spans: Tensor
    fg_logits: Tensor
    snippet_logits: Tensor


class MaDeOutput(NamedTuple):
    """Training forward: scores [B, U] (empty [B, 0] when disabled), the grounding of each
    video on its own track, ``negative_logits`` [B, K]: the window head's logits of each
    video on another track of the batch (empty [0, K] for DETR, or with one track),
    logit_scale (scalar, 1 / temperature), the scores against a cross-batch memory
    (``memory_dual`` [B, Q] over its Q tracks, ``memory_xpool`` [B, <= U] over the U
    hardest of them; [B, 0] without one) and the batch's encoded tracks (``music``, for
    that memory)."""

    dual: Tensor
    xpool: Tensor
    grounding: Grounding
    negative_logits: Tensor
    logit_scale: Tensor
    memory_dual: Tensor
    memory_xpool: Tensor
    music: MusicEncoding

    @property
    def spans(self) -> Tensor:
        return self.grounding.spans

    @property
    def fg_logits(self) -> Tensor:
        return self.grounding.fg_logits

    @property
    def snippet_logits(self) -> Tensor:
        return self.grounding.snippet_logits


class MaDe(nn.Module):
    """Music grounding by short video: retrieval (dual + X-Pool) and moment detection.

    Video frames [B, F, 512] and track snippets [U, S, 768] are encoded separately
    (:class:`TemporalEncoder`); the retrieval score of a pair is cos(h(v), h0(M)) ("dual")
    plus cos(h(v), h1(M|v)) (:class:`XPool`); the moment of a video in a track comes from
    the window head (:class:`~mgsv_sk.nn.window.WindowHead`, the default: every candidate
    window scored, trained against the batch's other tracks) or the paper's single-query
    DETR (:class:`MomentDetector`, ``detector="detr"``). Masks are bool, True = valid; every video
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

    def __init__(self, cfg: MaDeConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = self.cfg
        self.video_encoder = TemporalEncoder(c.video_dim, c.max_frames, c)
        self.music_encoder = TemporalEncoder(c.music_dim, c.max_snippets, c)
        self.xpool = XPool(c) if c.use_xpool else None
        self.detector: MomentDetector | WindowHead = (
            WindowHead(c) if c.detector == "window" else MomentDetector(c))
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
            dual = _cosine(v_emb, m_emb)  # [B,U]
            enabled.append(dual)
        if self.xpool is not None:
            xpool = self.xpool.pairwise(v_emb, music_enc.tokens, music_enc.mask, chunk)
            enabled.append(xpool)
        total = enabled[0] if len(enabled) == 1 else enabled[0] + enabled[1]
        return RetrievalScores(dual, xpool, total)

    def window_keys(self, music_enc: MusicEncoding) -> Tensor:
        """What the window head reads of the tracks, [U, S, D + 4] (its projections of the
        snippet tokens, 0 on padded snippets as past a track's end): a function of each
        track alone, which :meth:`ground` takes precomputed as ``music_keys`` (an exported
        catalogue stores them)."""
        if not isinstance(self.detector, WindowHead):
            raise ValueError("window_keys needs the window head (detector='window'); "
                             "DETR reads the music tokens themselves")
        keys = self.detector.track_keys(music_enc.tokens)
        return keys * music_enc.mask[..., None].to(keys.dtype)

    def ground(
        self, video_enc: VideoEncoding, music_enc: MusicEncoding, music_index: Tensor,
        video_seconds: Tensor | None = None, video_index: Tensor | None = None,
        music_keys: Tensor | None = None,
    ) -> Grounding:
        """Moment of video ``video_index[p]`` in track ``music_index[p]`` for P pairs ([P]
        long into the B videos and the U tracks; without ``video_index``, pair p is video p).

        ``video_seconds`` [B] is each video's length, the moment's (default: its number of
        valid frames, at 1 frame per second); the window head gives every window this
        length, DETR reads it only through the frames. A video in several pairs (one video
        against its re-ranked tracks) is encoded into the window head's projections once.
        ``music_keys``: :meth:`window_keys` of ``music_enc``, computed before (the window
        head then reads its mask and not its tokens).
        """
        b, u = video_enc.emb.shape[0], music_enc.emb.shape[0]
        pairs = b if video_index is None else int(video_index.shape[0])
        for name, index, bound in (("music_index", music_index, u),
                                   ("video_index", video_index, b)):
            if index is None:
                continue
            if index.dtype != torch.long or tuple(index.shape) != (pairs,):
                raise ValueError(f"{name} must be a long tensor of shape ({pairs},), got "
                                 f"{index.dtype} {tuple(index.shape)}")
            if pairs and not (0 <= int(index.min()) and int(index.max()) < bound):
                raise ValueError(f"{name} values must lie in [0, {bound}), got "
                                 f"[{int(index.min())}, {int(index.max())}]")
        if video_seconds is None:
            video_seconds = video_enc.mask.sum(dim=1).float()
        elif tuple(video_seconds.shape) != (b,):
            raise ValueError(f"video_seconds must have shape ({b},), got "
                             f"{tuple(video_seconds.shape)}")
        if isinstance(self.detector, WindowHead):
            if video_index is None:
                video_index = torch.arange(b, device=music_index.device)
            want = (*music_enc.mask.shape, self.cfg.d_model + CONTENT_CHANNELS)
            if music_keys is not None and tuple(music_keys.shape) != want:
                raise ValueError(f"music_keys must have shape {want} (window_keys of the "
                                 f"tracks), got {tuple(music_keys.shape)}")
            return self._windows(video_enc, music_enc, music_index, video_index, video_seconds,
                                 music_keys)
        if music_keys is not None:
            raise ValueError("music_keys are the window head's; DETR reads the music tokens")
        if video_index is not None:  # DETR reads each pair's video tokens: [B,...] -> [P,...]
            video_enc = VideoEncoding(*(t[video_index] for t in video_enc))
        # A track shared by several videos was encoded once; gather its tokens per video.
        music_tokens = music_enc.tokens[music_index]  # [U,S,D] -> [B,S,D]
        music_mask = music_enc.mask[music_index]  # [B,S]
        spans, fg_logits, snippet_logits = self.detector(
            video_enc.tokens, video_enc.mask, video_enc.emb, music_tokens, music_mask
        )
        start, end = cw_to_seconds(spans[-1].float())  # [B] each, seconds in [0, 240]
        fg = fg_logits[-1].float()
        logit = fg[:, FOREGROUND] - fg[:, 1 - FOREGROUND]  # sigmoid = softmax foreground
        return Grounding(start[:, None], start[:, None], end[:, None], logit[:, None], spans,
                         fg_logits, snippet_logits)

    def _windows(self, video_enc: VideoEncoding, music_enc: MusicEncoding, music_index: Tensor,
                 video_index: Tensor, video_seconds: Tensor,
                 music_keys: Tensor | None = None) -> Grounding:
        """The window head on pairs (video video_index[p], track music_index[p])."""
        assert isinstance(self.detector, WindowHead)
        keys = self.window_keys(music_enc) if music_keys is None else music_keys
        w = self.detector(video_enc.tokens, video_enc.mask, video_enc.emb, keys,
                          music_enc.mask, music_index, video_index, video_seconds)
        no_layers = w.logits.new_zeros(0, w.logits.shape[0], 2)  # [0,P,2]
        return Grounding(w.anchors, w.starts, w.ends, w.logits, no_layers, no_layers,
                         w.snippet_logits)

    # -- training forward -----------------------------------------------------------------
    def forward(
        self,
        video: Tensor,
        video_mask: Tensor,
        music: Tensor,
        music_mask: Tensor,
        music_index: Tensor,
        video_seconds: Tensor | None = None,
        memory: MemoryNegatives | None = None,
    ) -> MaDeOutput:
        """Training forward over B videos and the U unique tracks of the batch.

        video [B, F, video_dim], video_mask [B, F] bool, music [U, S, music_dim],
        music_mask [U, S] bool, music_index [B] long (video b's track is music[music_index[b]]),
        video_seconds [B] (optional, see :meth:`ground`) -> :class:`MaDeOutput`; feed it to
        :func:`mgsv_sk.nn.losses.made_losses`. With the window head each video is also
        grounded on one other track of the batch (drawn with torch's generator), the
        negatives that teach the moment score whether a track fits at all. ``memory``:
        encoded tracks from earlier batches (:class:`mgsv_sk.train._memory.TrackMemory`),
        scored as extra retrieval negatives (X-Pool only on as many of them as the batch
        has tracks, those closest to the batch's videos).
        """
        video_enc = self.encode_video(video, video_mask)
        music_enc = self.encode_music(music, music_mask)
        scores = self.retrieval_scores(video_enc, music_enc)
        b, u = music_index.shape[0], music_enc.emb.shape[0]
        if not isinstance(self.detector, WindowHead) or u == 1:
            grounding = self.ground(video_enc, music_enc, music_index, video_seconds)
            negative = grounding.logits.new_zeros(0, grounding.logits.shape[1])  # [0,K]
        else:  # one pass over 2B pairs: each video on its track, then on another one
            if video_seconds is None:
                video_seconds = video_enc.mask.sum(dim=1).float()
            shift = torch.randint(1, u, (b,), device=music_index.device)
            other = (music_index + shift) % u  # never the video's own track
            videos = torch.arange(b, device=music_index.device)
            both = self._windows(video_enc, music_enc, torch.cat([music_index, other]),
                                 torch.cat([videos, videos]), video_seconds)
            grounding = Grounding(*(t[:, :b] if t.ndim == 3 else t[:b] for t in both))
            negative = both.logits[b:]
        memory_dual, memory_xpool = ((scores.dual[:, :0], scores.xpool[:, :0]) if memory is None
                                     else self._memory_scores(video_enc, memory, u))
        return MaDeOutput(
            dual=scores.dual,
            xpool=scores.xpool,
            grounding=grounding,
            negative_logits=negative,
            logit_scale=self.logit_scale(),
            memory_dual=memory_dual,
            memory_xpool=memory_xpool,
            music=music_enc,
        )

    def _memory_scores(self, video_enc: VideoEncoding, memory: MemoryNegatives,
                       hardest: int) -> tuple[Tensor, Tensor]:
        """Scores of the batch's videos against a cross-batch memory's Q tracks: the dual
        score [B, Q] against all of them, X-Pool [B, min(hardest, Q)] against the
        ``hardest`` closest to the batch's videos by the embeddings' cosine ([B, 0] where a
        score is disabled). X-Pool costs a [D, D] product per pair where the dual score
        costs a dot product: in the ``noisy`` world X-Pool against all of a 256-track
        memory made a fit 37 % slower, against the closest U of 1,024 15 %, for about the
        same gain. Only those tracks' tokens are gathered from the memory."""
        cosine = _cosine(video_enc.emb, memory.music.emb[memory.rows])  # [B,Q]
        empty = cosine[:, :0]
        xpool = empty
        if self.xpool is not None:
            closeness = cosine.detach().amax(dim=0)  # [Q]: each track's closest video
            closest = closeness.topk(min(hardest, closeness.shape[0])).indices
            chosen = memory.tracks(memory.rows[closest])
            xpool = self.xpool.pairwise(video_enc.emb, chosen.tokens, chosen.mask)
        return (cosine if self.cfg.use_dual else empty), xpool


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
