"""Torch twins of the span geometry in :mod:`mgsv_sk.data.spans` (elementwise, differentiable).

A span is either (center, width) in units of ``scale`` seconds (the model's output space,
``scale`` = 240 s, the longest track) or (start, end) in seconds; the last axis has size 2.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mgsv_sk.data.spans import MAX_MUSIC_SECONDS

SPAN_SCALE = MAX_MUSIC_SECONDS  # seconds per unit of (center, width)


def cw_to_se(cw: Tensor, scale: float = SPAN_SCALE) -> Tensor:
    """(center, width) [..., 2] -> (start, end) [..., 2] = (c - w/2, c + w/2) * scale."""
    center, width = cw.unbind(-1)
    return torch.stack([center - 0.5 * width, center + 0.5 * width], dim=-1) * scale


def cw_to_seconds(cw: Tensor, limit: float = SPAN_SCALE) -> tuple[Tensor, Tensor]:
    """(center, width) [..., 2] in units of 240 s -> start, end [...] in seconds, inside
    [0, ``limit``] with end >= start: a predicted moment the output can carry."""
    start, end = cw_to_se(cw).unbind(-1)
    start = start.clamp(0.0, limit)
    return start, torch.maximum(end, start).clamp(max=limit)


def se_to_cw(se: Tensor, scale: float = SPAN_SCALE) -> Tensor:
    """(start, end) [..., 2] -> (center, width) [..., 2] = ((s + e)/2, e - s) / scale."""
    start, end = se.unbind(-1)
    return torch.stack([0.5 * (start + end), end - start], dim=-1) / scale


def _intersection_union_hull(a_se: Tensor, b_se: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    a_start, a_end = a_se.unbind(-1)
    b_start, b_end = b_se.unbind(-1)
    inter = (torch.minimum(a_end, b_end) - torch.maximum(a_start, b_start)).clamp_min(0.0)
    union = (a_end - a_start) + (b_end - b_start) - inter
    hull = torch.maximum(a_end, b_end) - torch.minimum(a_start, b_start)
    return inter, union, hull


def span_iou(a_cw: Tensor, b_cw: Tensor, eps: float = 1e-6) -> Tensor:
    """Elementwise IoU of (center, width) spans [..., 2] -> [...]."""
    inter, union, _ = _intersection_union_hull(cw_to_se(a_cw, 1.0), cw_to_se(b_cw, 1.0))
    return inter / union.clamp_min(eps)


def generalized_span_iou(a_cw: Tensor, b_cw: Tensor, eps: float = 1e-6) -> Tensor:
    """Elementwise generalised IoU (Rezatofighi et al. 2019) in 1-D: [..., 2] -> [...].

    GIoU = IoU - (hull - union) / hull, in [-1, 1]; 1 for identical spans and below 0 for
    disjoint spans, decreasing with the gap between them, so it gives a gradient even when the
    spans do not overlap.
    """
    inter, union, hull = _intersection_union_hull(cw_to_se(a_cw, 1.0), cw_to_se(b_cw, 1.0))
    union = union.clamp_min(eps)
    hull = hull.clamp_min(eps)
    return inter / union - (hull - union) / hull


def temporal_iou(pred_se: Tensor, gt_se: Tensor, duration: Tensor) -> Tensor:
    """Protocol IoU of predicted and true (start, end) spans in seconds [..., 2] -> [...].

    Mirrors :func:`mgsv_sk.data.spans.temporal_iou` line for line: the prediction's start is
    clamped to >= 0 and its end to <= 240 s and then to <= the track ``duration`` [...]; the
    truth's end is cut at 240 s; a prediction's length is max(end - start, 0); the IoU is 0
    where the truth is empty or the union is not positive.
    """
    p_start = pred_se[..., 0].clamp_min(0.0)
    p_end = torch.minimum(pred_se[..., 1].clamp_max(SPAN_SCALE), duration)
    g_start, g_end = gt_se[..., 0], gt_se[..., 1].clamp_max(SPAN_SCALE)
    p_len = (p_end - p_start).clamp_min(0.0)
    g_len = g_end - g_start
    inter = (torch.minimum(p_end, g_end) - torch.maximum(p_start, g_start)).clamp_min(0.0)
    union = p_len + g_len - inter
    valid = (g_len > 0) & (union > 0)
    return torch.where(valid, inter / torch.where(valid, union, torch.ones_like(union)), 0.0)
