"""Leaf building blocks shared by the MaDe parts.

Shape legend used in every file of ``mgsv_sk.nn``:
B batch of videos, U unique tracks in a batch, N catalogue tracks, F frames, S snippets,
T tokens of one sequence (F, S or F + S), D model dim, H heads, Dh = D / H head dim,
L decoder layers.

Masks are boolean with True = valid (a frame or snippet that exists). Attention never sees a
query whose keys are all padding: the model checks at its entry that every video has at least
one valid frame and every track at least one valid snippet (:func:`check_masks`), so softmax
rows are never empty and no NaN can appear; padded *query* rows still attend to the valid keys
and are later zeroed or ignored.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoid_position_code(length: int, dim: int) -> Tensor:
    """Fixed sine/cosine position code of Vaswani et al., interleaved. Returns [length, dim]."""
    position = torch.arange(length, dtype=torch.float64)[:, None]  # [T,1]
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(1e4) / dim))
    angle = position * inv_freq[None, :]  # [T,D/2]
    code = torch.stack([angle.sin(), angle.cos()], dim=-1).reshape(length, dim)  # [T,D]
    return code.float()


class SinePositionCode(nn.Module):
    """Fixed position code for sequences of up to ``max_len`` tokens (not a parameter)."""

    code: Tensor

    def __init__(self, max_len: int, dim: int) -> None:
        super().__init__()
        self.max_len = max_len
        # Non-persistent: it is a pure function of (max_len, dim), so checkpoints omit it.
        self.register_buffer("code", sinusoid_position_code(max_len, dim), persistent=False)

    def forward(self, length: int) -> Tensor:
        """Code of positions 0..length-1, [T, D]."""
        if length > self.max_len:
            raise ValueError(
                f"sequence length {length} exceeds the position code's max_len={self.max_len}; "
                "raise MaDeConfig.max_frames / max_snippets or truncate the input"
            )
        return self.code[:length]


def check_masks(mask: Tensor, name: str, shape: tuple[int, ...]) -> None:
    """Validate a [B, T] boolean mask: right shape, and >= 1 valid position per row."""
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor (True = valid), got {mask.dtype}; "
                        f"pass {name}.bool()")
    if tuple(mask.shape) != shape:
        raise ValueError(f"{name} must have shape {shape} to match the features, "
                         f"got {tuple(mask.shape)}")
    if mask.numel() and not bool(mask.any(dim=1).all()):
        empty = (~mask.any(dim=1)).nonzero().flatten()[:5].tolist()
        raise ValueError(f"{name}: every row needs at least one valid position; rows {empty} "
                         "are all padding (drop those samples)")


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x [B, T, D] over the valid positions of mask [B, T]. Returns [B, D].

    Elementwise multiply-and-sum rather than a matmul, so autocast leaves it in x's dtype.
    """
    weight = mask.to(x.dtype)  # [B,T]
    total = (x * weight[..., None]).sum(dim=1)  # [B,D]
    return total / weight.sum(dim=1, keepdim=True).clamp_min(1.0)


def unit(x: Tensor, dim: int = -1, eps: float = 1e-12) -> Tensor:
    """``F.normalize(x, dim=dim)``, the same value and gradient, without its explicit
    ``expand_as``: exported, the division broadcasts the norm, where F.normalize's graph
    first materialises it at the input's full size (onnxruntime's Expand took a tenth of
    the window head's time)."""
    return x / x.norm(dim=dim, keepdim=True).clamp_min(eps)


def compute_dtype(x: Tensor) -> torch.dtype:
    """dtype matmuls on x's device run in: the autocast dtype when autocast is on."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def full_precision(x: Tensor) -> torch.autocast:
    """Context that switches autocast off on x's device (for float32 islands)."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def attention_mask(mask: Tensor) -> Tensor:
    """Key-padding mask [B, T] -> SDPA boolean mask [B, 1, 1, T] (True = may attend)."""
    return mask[:, None, None, :]  # [B,1,1,T]


class _MaskedScale(torch.autograd.Function):
    """y = x * keep * scale with the bool mask saved for backward (1 byte per element)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, keep: Tensor, scale: float) -> Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        # where() reads the bool mask directly; x * keep would first copy it to x's dtype.
        return torch.where(keep, x, 0.0).mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0.0).mul_(ctx.scale), None, None


def fast_dropout(x: Tensor, p: float) -> Tensor:
    """Inverted dropout whose mask comes from 16-bit uniform draws, four per 64-bit number.

    torch's CPU dropout draws one Bernoulli variate per element, which made dropout about a
    fifth of a MaDe training step. Here the drop probability is rounded to a multiple of
    1 / 65536 and the kept values are scaled by 1 / (1 - that rounded p), so the output is
    still unbiased.
    """
    n = x.numel()
    draws = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device)
    draws.random_(-(2**63), 2**63 - 1)  # full 64-bit range: all four int16 lanes uniform
    lanes = draws.view(torch.int16)[:n].view(x.shape)
    cut = round(p * 65536)
    keep = lanes >= cut - 32768  # P(keep) = 1 - cut / 65536
    return _MaskedScale.apply(x, keep, 65536.0 / (65536 - cut))


class Dropout(nn.Module):
    """Drop-in for ``nn.Dropout`` using :func:`fast_dropout`."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or round(self.p * 65536) == 0:
            return x
        return fast_dropout(x, self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _activation(name: str) -> nn.Module:
    if name == "gelu":
        return nn.GELU()
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"activation must be 'gelu' or 'relu', got {name!r}")


class MLP(nn.Module):
    """``n_layers`` linear layers with ReLU in between (none after the last)."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, n_layers: int) -> None:
        super().__init__()
        dims = [d_in] + [d_hidden] * (n_layers - 1) + [d_out]
        pairs = zip(dims[:-1], dims[1:], strict=True)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in pairs)

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class FeedForward(nn.Module):
    """Position-wise FFN: Linear(D, D_ffn) -> activation -> dropout -> Linear(D_ffn, D)."""

    def __init__(self, d_model: int, d_ffn: int, activation: str, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ffn)
        self.act = _activation(activation)
        self.drop = Dropout(dropout)
        self.fc2 = nn.Linear(d_ffn, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused QKV projection and SDPA.

    An optional position code ``pos`` [T, D] is added to queries and keys only (DETR style).
    Because the code is the same for every sample it is projected once per call,
    W_qk (x + p) = W_qk x + W_qk p, instead of adding it to the [B, T, D] input.
    """

    def __init__(self, d_model: int, n_heads: int, attn_dropout: float = 0.0) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, attn_mask: Tensor, pos: Tensor | None = None) -> Tensor:
        """x [B, T, D], attn_mask [B, 1, 1, T] bool, pos [T, D] or None -> [B, T, D]."""
        b, t, d = x.shape
        qkv = self.qkv(x)  # [B,T,3D]
        if pos is not None:
            pos_qk = F.linear(pos, self.qkv.weight[: 2 * d])  # [T,2D]
            qkv = qkv + F.pad(pos_qk, (0, d))  # [B,T,3D], V untouched
        qkv = qkv.view(b, t, 3, self.n_heads, d // self.n_heads)  # [B,T,3,H,Dh]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B,H,T,Dh]
        p = self.attn_dropout if self.training else 0.0
        # The attention core runs in float32 even under bf16 autocast: torch's CPU flash
        # kernel is ~4x slower backwards in bf16 than in float32 (torch 2.13, head dim 32).
        with full_precision(x):
            o = F.scaled_dot_product_attention(
                q.float(), k.float(), v.float(), attn_mask=attn_mask, dropout_p=p
            )
        o = o.to(qkv.dtype).transpose(1, 2).reshape(b, t, d)  # [B,H,T,Dh] -> [B,T,D]
        return self.out(o)


class EncoderLayer(nn.Module):
    """Transformer encoder layer (self-attention + FFN), pre- or post-norm.

    Parameters
    ----------
    dropout : float
        Dropout on both residual branches (and inside the FFN when ``ffn_dropout``).
    attn_dropout : float
        Dropout on the attention weights.
    norm_first : bool
        Pre-norm (CLIP-style temporal blocks) or post-norm (DETR encoder).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ffn: int,
        *,
        dropout: float,
        attn_dropout: float,
        activation: str,
        norm_first: bool,
        ffn_dropout: bool,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.attn = SelfAttention(d_model, n_heads, attn_dropout)
        self.ffn = FeedForward(d_model, d_ffn, activation, dropout if ffn_dropout else 0.0)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.drop1 = Dropout(dropout)
        self.drop2 = Dropout(dropout)

    def forward(self, x: Tensor, attn_mask: Tensor, pos: Tensor | None = None) -> Tensor:
        """x [B, T, D], attn_mask [B, 1, 1, T], pos [T, D] or None -> [B, T, D]."""
        if self.norm_first:
            x = x + self.drop1(self.attn(self.norm1(x), attn_mask, pos))
            return x + self.drop2(self.ffn(self.norm2(x)))
        x = self.norm1(x + self.drop1(self.attn(x, attn_mask, pos)))
        return self.norm2(x + self.drop2(self.ffn(x)))


def xavier_init_(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every Linear inside ``module`` (DETR init)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
