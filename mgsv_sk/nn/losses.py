"""MaDe training losses, returned as named terms so the training history can log each.

Retrieval: symmetric InfoNCE over the [B, U] score matrix of B videos against the U unique
tracks of the batch, one shared learned temperature. Videos that share a track are not
negatives of each other (the public code counts them as negatives): video -> music is a
cross-entropy over the U tracks, music -> video treats every video of the track as a
positive, -log(sum_pos exp / sum_all exp).

Window head (the default): a cross-entropy over every candidate window against soft
targets from each candidate's IoU with the true moment, an L1 refinement of the starts
weighted by the same targets, and the moment score's binary cross-entropy: the best window
of the video's own track should score 1, the best window of another track of the batch 0
(:func:`window_terms`).

DETR: the single query is always matched to the one true moment, so Hungarian matching
is trivial: weighted L1 on (center, width), GIoU loss and foreground cross-entropy, on the
final decoder layer plus (optionally, weighted) every earlier decoder layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mgsv_sk.data.spans import MAX_MUSIC_SECONDS, SNIPPET_HOP_SECONDS

from .detector import FOREGROUND
from .model import Grounding, MaDeOutput
from .span_ops import generalized_span_iou

#: Soft targets of the window cross-entropy: exp((IoU - 1) / this), so a candidate of IoU
#: 0.9 weighs e^-1 of the best one and one of IoU 0.5 e^-5.
WINDOW_TARGET_TEMPERATURE = 0.1


@dataclass(frozen=True, kw_only=True)
class LossWeights:
    """Weights of the loss terms: DETR's l1, giou, fg, the window head's ``window``,
    ``boundary`` and ``match``, the snippet evidence and the retrieval terms. Those are
    :class:`mgsv_sk.MGSVGrounder` parameters (``l1_weight``, ...), whose defaults are
    declared once in :mod:`mgsv_sk.train.parameters`; the fit builds this from them.

    ``aux`` adds the detection terms of every non-final decoder layer, each scaled by
    ``aux_weight``. ``bg_weight`` is the background class weight of the foreground
    cross-entropy; with one always-matched query every target is foreground, so it has no
    effect and is kept only for parity with multi-query DETR.
    """

    l1: float
    giou: float
    fg: float
    snippet: float
    window: float
    boundary: float
    match: float
    dual: float
    xpool: float
    aux: bool
    aux_weight: float = 1.0
    bg_weight: float = 0.1

    def __post_init__(self) -> None:
        bad = [
            f"{name}={getattr(self, name)!r}"
            for name in ("l1", "giou", "fg", "snippet", "window", "boundary", "match", "dual",
                         "xpool", "aux_weight", "bg_weight")
            if not getattr(self, name) >= 0
        ]
        if bad:
            raise ValueError(f"LossWeights must be >= 0, got {', '.join(bad)}")


class LossTerms(NamedTuple):
    """Scalar loss tensors. ``dual`` / ``xpool`` are None when that score is disabled; the
    terms of the head not in use are None (``l1``, ``giou``, ``fg``: DETR; ``window``,
    ``boundary``, ``match``: the window head; ``match`` also without negatives).

    DETR terms are unweighted but summed over the decoder layers used (the final one plus
    ``aux_weight`` times each auxiliary one); ``total`` is the weighted sum.
    """

    total: Tensor
    l1: Tensor | None
    giou: Tensor | None
    fg: Tensor | None
    window: Tensor | None
    boundary: Tensor | None
    match: Tensor | None
    snippet: Tensor
    dual: Tensor | None
    xpool: Tensor | None

    def as_floats(self) -> dict[str, float]:
        """The present terms as Python floats, for logging."""
        return {k: float(v.detach()) for k, v in self._asdict().items() if v is not None}


def info_nce(logits: Tensor, music_index: Tensor, extra: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE of logits [B, U] where video b's positive is track music_index[b].

    Video -> music: cross-entropy over the U tracks and the columns of ``extra`` [B, Q]
    (tracks that are no video's positive: a cross-batch memory). Music -> video: for each
    of the U tracks that has at least one video, -log(sum over its videos of exp / sum
    over all videos of exp). Returns the mean of the two directions (float32 scalar).
    """
    logits = logits.float()
    b, u = logits.shape
    v2m = F.cross_entropy(logits if extra is None or not extra.shape[1]
                          else torch.cat([logits, extra.float()], dim=1), music_index)
    positive = torch.zeros(b, u, dtype=torch.bool, device=logits.device)
    positive[torch.arange(b, device=logits.device), music_index] = True  # [B,U]
    log_all = torch.logsumexp(logits, dim=0)  # [U]
    log_pos = torch.logsumexp(logits.masked_fill(~positive, float("-inf")), dim=0)  # [U]
    has_video = positive.any(dim=0)  # tracks without videos have no music -> video term
    m2v = (log_all - log_pos)[has_video].mean()
    return 0.5 * (v2m + m2v)


def detection_terms(
    spans: Tensor, fg_logits: Tensor, target_cw: Tensor, weights: LossWeights
) -> tuple[Tensor, Tensor, Tensor]:
    """L1, GIoU loss and foreground CE summed over decoder layers.

    spans [L, B, 2] and fg_logits [L, B, 2] from the detector, target_cw [B, 2]
    (center, width in units of 240 s).
    """
    n_layers = spans.shape[0]
    layer_weight = torch.zeros(n_layers, dtype=torch.float32, device=spans.device)
    layer_weight[-1] = 1.0
    if weights.aux and n_layers > 1:
        layer_weight[:-1] = weights.aux_weight
    spans = spans.float()
    target = target_cw.float()[None].expand_as(spans)  # [L,B,2]
    l1 = (spans - target).abs().mean(dim=(1, 2))  # [L]
    giou = (1.0 - generalized_span_iou(spans, target)).mean(dim=1)  # [L]
    class_weight = torch.ones(2, device=spans.device)
    class_weight[1 - FOREGROUND] = weights.bg_weight
    labels = torch.full(spans.shape[:2], FOREGROUND, dtype=torch.long, device=spans.device)
    fg = F.cross_entropy(
        fg_logits.float().flatten(0, 1), labels.flatten(), weight=class_weight, reduction="none"
    ).view(n_layers, -1).mean(dim=1)  # [L*B] -> [L,B] -> [L]
    return (l1 * layer_weight).sum(), (giou * layer_weight).sum(), (fg * layer_weight).sum()


def snippet_evidence_loss(snippet_logits: Tensor, target_cw: Tensor) -> Tensor:
    """Binary cross-entropy of the per-snippet evidence: is snippet k (centred at 2.5 k s)
    inside the true moment? snippet_logits [B, S] (-inf on padding), target_cw [B, 2]."""
    logits = snippet_logits.float()
    valid = torch.isfinite(logits)  # [B,S]
    step = SNIPPET_HOP_SECONDS / MAX_MUSIC_SECONDS  # snippet centres in span units
    centres = torch.arange(logits.shape[1], device=logits.device) * step
    center, width = target_cw.float().unbind(-1)  # [B] each
    inside = ((centres[None] - center[:, None]).abs() <= width[:, None] / 2).float()  # [B,S]
    loss = F.binary_cross_entropy_with_logits(logits.masked_fill(~valid, 0.0), inside,
                                              reduction="none")
    return (loss * valid).sum() / valid.sum().clamp_min(1)


def window_iou(anchors: Tensor, seconds: Tensor, target_cw: Tensor) -> Tensor:
    """IoU of each candidate window [anchor, anchor + length] (cut at 240 s) with the true
    moment. anchors [B, K] seconds, seconds [B], target_cw [B, 2] -> [B, K]."""
    center, width = (target_cw.float() * MAX_MUSIC_SECONDS).unbind(-1)  # [B] seconds
    gt_start, gt_end = (center - width / 2)[:, None], (center + width / 2)[:, None]
    start = anchors.float()
    end = (start + seconds.float()[:, None]).clamp(max=MAX_MUSIC_SECONDS)
    inter = (torch.minimum(end, gt_end) - torch.maximum(start, gt_start)).clamp(min=0.0)
    union = (end - start) + (gt_end - gt_start) - inter
    return inter / union.clamp(min=1e-6)


def window_terms(
    grounding: Grounding, negative_logits: Tensor, seconds: Tensor, target_cw: Tensor
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The window head's terms: candidate cross-entropy, start refinement, moment score.

    grounding: the head on each video's own track (anchors, starts, logits [B, K]);
    negative_logits [B, K] on another track (or [0, K]: no match term); seconds [B] the
    videos' lengths; target_cw [B, 2] the true moments. Returns (window, boundary, match).
    """
    logits = grounding.logits.float()
    valid = torch.isfinite(logits)  # [B,K]
    iou = window_iou(grounding.anchors, seconds, target_cw)  # [B,K]
    target = ((iou - 1.0) / WINDOW_TARGET_TEMPERATURE).masked_fill(~valid, float("-inf"))
    target = target.softmax(dim=1)  # [B,K], 0 off the track
    log_p = logits.log_softmax(dim=1).masked_fill(~valid, 0.0)
    window = -(target * log_p).sum(dim=1).mean()
    center, width = (target_cw.float() * MAX_MUSIC_SECONDS).unbind(-1)
    gt_start = (center - width / 2)[:, None]  # [B,1]
    error = (grounding.starts.float() - gt_start).abs() / SNIPPET_HOP_SECONDS
    boundary = (target * error.masked_fill(~valid, 0.0)).sum(dim=1).mean()
    match = None
    if negative_logits.shape[0]:
        best_pos = logits.max(dim=1).values  # [B]
        best_neg = negative_logits.float().max(dim=1).values
        match = 0.5 * (F.binary_cross_entropy_with_logits(best_pos, torch.ones_like(best_pos))
                       + F.binary_cross_entropy_with_logits(best_neg,
                                                            torch.zeros_like(best_neg)))
    return window, boundary, match


def made_losses(
    output: MaDeOutput,
    music_index: Tensor,
    target_cw: Tensor,
    weights: LossWeights,
    video_seconds: Tensor | None = None,
) -> LossTerms:
    """All MaDe loss terms of one training batch.

    Parameters
    ----------
    output : MaDeOutput
        ``MaDe.forward`` result: cosine scores [B, U] (an empty tensor when that score is
        disabled), the logit scale 1 / temperature, the grounding on each video's track
        and, for the window head, the logits on another track.
    music_index : Tensor
        [B] long, the unique-track column of each video.
    target_cw : Tensor
        [B, 2] true (center, width) in units of 240 s.
    weights : LossWeights
        The terms' weights (``MGSVGrounder._loss_weights()``: the estimator's).
    video_seconds : Tensor, optional
        [B] the videos' lengths, as given to ``MaDe.forward`` (window head; default: the
        true moments' lengths).
    """
    w = weights
    g = output.grounding
    snippet = snippet_evidence_loss(g.snippet_logits, target_cw)
    total = w.snippet * snippet
    l1 = giou = fg = window = boundary = match = None
    if g.spans.shape[0]:  # DETR: one row per decoder layer
        l1, giou, fg = detection_terms(g.spans, g.fg_logits, target_cw, w)
        total = total + w.l1 * l1 + w.giou * giou + w.fg * fg
    else:
        seconds = (video_seconds if video_seconds is not None
                   else target_cw[:, 1].float() * MAX_MUSIC_SECONDS)
        window, boundary, match = window_terms(g, output.negative_logits, seconds, target_cw)
        total = total + w.window * window + w.boundary * boundary
        if match is not None:
            total = total + w.match * match
    scale = output.logit_scale.float()
    dual = xpool = None
    if output.dual.numel():
        dual = info_nce(output.dual * scale, music_index, output.memory_dual * scale)
        total = total + w.dual * dual
    if output.xpool.numel():
        xpool = info_nce(output.xpool * scale, music_index, output.memory_xpool * scale)
        total = total + w.xpool * xpool
    return LossTerms(total=total, l1=l1, giou=giou, fg=fg, window=window, boundary=boundary,
                     match=match, snippet=snippet, dual=dual, xpool=xpool)
