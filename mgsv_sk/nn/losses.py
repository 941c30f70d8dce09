"""MaDe training losses, returned as named terms so the training history can log each.

Retrieval: symmetric InfoNCE over the [B, U] score matrix of B videos against the U unique
tracks of the batch, one shared learned temperature. Videos that share a track are not
negatives of each other (the public code counts them as negatives): video -> music is a
cross-entropy over the U tracks, music -> video treats every video of the track as a
positive, -log(sum_pos exp / sum_all exp).

Detection: the single query is always matched to the one true moment, so Hungarian matching
is trivial: weighted L1 on (center, width), GIoU loss and foreground cross-entropy, on the
final decoder layer plus (optionally, weighted) every earlier decoder layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .detector import FOREGROUND
from .model import MaDeOutput
from .span_ops import generalized_span_iou

SNIPPET_HOP = 2.5  # seconds between snippet centres
MAX_SECONDS = 240.0  # spans are in units of this


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms (paper defaults).

    ``aux`` adds the detection terms of every non-final decoder layer, each scaled by
    ``aux_weight``. ``bg_weight`` is the background class weight of the foreground
    cross-entropy; with one always-matched query every target is foreground, so it has no
    effect and is kept only for parity with multi-query DETR.
    """

    l1: float = 4.0
    giou: float = 1.0
    fg: float = 0.8
    snippet: float = 1.0
    dual: float = 1.0
    xpool: float = 1.0
    aux: bool = True
    aux_weight: float = 1.0
    bg_weight: float = 0.1

    def __post_init__(self) -> None:
        bad = [
            f"{name}={getattr(self, name)!r}"
            for name in ("l1", "giou", "fg", "snippet", "dual", "xpool", "aux_weight",
                         "bg_weight")
            if not getattr(self, name) >= 0
        ]
        if bad:
            raise ValueError(f"LossWeights must be >= 0, got {', '.join(bad)}")


class LossTerms(NamedTuple):
    """Scalar loss tensors. ``dual`` / ``xpool`` are None when that score is disabled.

    Detection terms are unweighted but summed over the decoder layers used (the final one
    plus ``aux_weight`` times each auxiliary one); ``total`` is the weighted sum.
    """

    total: Tensor
    l1: Tensor
    giou: Tensor
    fg: Tensor
    snippet: Tensor
    dual: Tensor | None
    xpool: Tensor | None

    def as_floats(self) -> dict[str, float]:
        """The present terms as Python floats, for logging."""
        return {k: float(v.detach()) for k, v in self._asdict().items() if v is not None}


def info_nce(logits: Tensor, music_index: Tensor) -> Tensor:
    """Symmetric InfoNCE of logits [B, U] where video b's positive is track music_index[b].

    Video -> music: cross-entropy over the U tracks. Music -> video: for each track that has
    at least one video, -log(sum over its videos of exp / sum over all videos of exp).
    Returns the mean of the two directions (float32 scalar).
    """
    logits = logits.float()
    b, u = logits.shape
    v2m = F.cross_entropy(logits, music_index)
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
    centres = torch.arange(logits.shape[1], device=logits.device) * (SNIPPET_HOP / MAX_SECONDS)
    center, width = target_cw.float().unbind(-1)  # [B] each
    inside = ((centres[None] - center[:, None]).abs() <= width[:, None] / 2).float()  # [B,S]
    loss = F.binary_cross_entropy_with_logits(logits.masked_fill(~valid, 0.0), inside,
                                              reduction="none")
    return (loss * valid).sum() / valid.sum().clamp_min(1)


def made_losses(
    output: MaDeOutput,
    music_index: Tensor,
    target_cw: Tensor,
    weights: LossWeights | None = None,
) -> LossTerms:
    """All MaDe loss terms of one training batch.

    Parameters
    ----------
    output : MaDeOutput
        ``MaDe.forward`` result: cosine scores [B, U] (an empty tensor when that score is
        disabled), the logit scale 1 / temperature, spans and fg_logits [L, B, 2].
    music_index : Tensor
        [B] long, the unique-track column of each video.
    target_cw : Tensor
        [B, 2] true (center, width) in units of 240 s.
    weights : LossWeights, optional
        Defaults to the paper's weights.
    """
    w = weights if weights is not None else LossWeights()
    l1, giou, fg = detection_terms(output.spans, output.fg_logits, target_cw, w)
    snippet = snippet_evidence_loss(output.snippet_logits, target_cw)
    total = w.l1 * l1 + w.giou * giou + w.fg * fg + w.snippet * snippet
    scale = output.logit_scale.float()
    dual = xpool = None
    if output.dual.numel():
        dual = info_nce(output.dual * scale, music_index)
        total = total + w.dual * dual
    if output.xpool.numel():
        xpool = info_nce(output.xpool * scale, music_index)
        total = total + w.xpool * xpool
    return LossTerms(total=total, l1=l1, giou=giou, fg=fg, snippet=snippet, dual=dual,
                     xpool=xpool)
