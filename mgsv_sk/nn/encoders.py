"""Per-modality temporal encoder: features -> tokens and one L2-normalised embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import MaDeConfig
from .layers import EncoderLayer, SinePositionCode, attention_mask, masked_mean, unit


class TemporalEncoder(nn.Module):
    """Linear projection + fixed sine position code + temporal self-attention.

    Used twice: for video frames (in_dim 512, T = F) and for music snippets (in_dim 768,
    T = S). The layers are pre-norm (CLIP-style temporal blocks) with GELU, the configured
    heads and FFN width, and ``cfg.temporal_dropout`` on the residual branches.

    The features are standardised first, ``(x - input_mean) / input_scale``, with the
    training set's centre and spread (:meth:`set_input_moments`, from
    :func:`mgsv_sk.train._moments.feature_moments`; the identity until set): the encoder
    then sees the same input whatever offset and overall scale the features a user's
    extractor gives have (CLIP embeddings with norm ~10 and a mean direction every frame
    shares, AST outputs, pre-normalised ones).
    """

    input_mean: Tensor
    input_scale: Tensor

    def __init__(self, in_dim: int, max_len: int, cfg: MaDeConfig) -> None:
        super().__init__()
        self.input_dropout = cfg.input_dropout
        self.proj = nn.Linear(in_dim, cfg.d_model)
        self.pos = SinePositionCode(max_len, cfg.d_model)
        self.layers = nn.ModuleList(
            EncoderLayer(
                cfg.d_model,
                cfg.n_heads,
                cfg.d_ffn,
                dropout=cfg.temporal_dropout,
                attn_dropout=0.0,
                activation="gelu",
                norm_first=True,
                ffn_dropout=False,
            )
            for _ in range(cfg.temporal_layers)
        )
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self.register_buffer("input_scale", torch.ones(in_dim))

    def set_input_moments(self, mean: Tensor, scale: Tensor) -> None:
        """Standardise the input with this centre and scale ([in_dim] each; scale > 0)."""
        dim = self.input_mean.shape[0]
        mean = torch.as_tensor(mean, dtype=torch.float32)
        scale = torch.as_tensor(scale, dtype=torch.float32)
        if mean.shape != (dim,) or scale.shape != (dim,):
            raise ValueError(f"input moments must have shape ({dim},), got {tuple(mean.shape)} "
                             f"and {tuple(scale.shape)}")
        if not (torch.isfinite(mean).all() and torch.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError("input moments must be finite, with scale > 0")
        self.input_mean.copy_(mean)
        self.input_scale.copy_(scale)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, T, in_dim], mask [B, T] bool -> (tokens [B, T, D], embedding [B, D]).

        Padded token rows are exactly zero; the embedding is the masked mean of the tokens,
        L2-normalised (computed in float32).
        """
        t = x.shape[1]
        # padded rows stay zero, as the features give them
        x = (x - self.input_mean) / self.input_scale * mask[..., None].to(x.dtype)
        if self.training and self.input_dropout > 0:
            x = F.dropout(x, self.input_dropout, training=True)
        h = self.proj(x) + self.pos(t)  # [B,T,D]
        attn_mask = attention_mask(mask)  # [B,1,1,T]
        for layer in self.layers:
            h = layer(h, attn_mask)
        tokens = h * mask[..., None].to(h.dtype)  # [B,T,D], padding zeroed
        emb = unit(masked_mean(tokens.float(), mask), dim=-1)  # [B,D]
        return tokens, emb
