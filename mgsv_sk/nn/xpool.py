"""X-Pool: video-guided attention pooling of a track's snippet tokens (the "single" score).

h1(M|v) = LN3(x + W_p x + b_p), x = LN2(out_proj(Attn(q(LN1 h(v)), k(LN1 M), v(LN1 M))))
with one head, a masked softmax over snippets and every projection identity-initialised;
the score is cos(h(v), h1(M|v)).

Two exact rewrites keep the all-pairs version cheap:

* the output projection is linear and the attention weights sum to 1, so it is folded into
  the values once per track, W_o(sum_s a_s v_s) + b_o = sum_s a_s (W_o v_s + b_o), instead of
  once per (video, track) pair;
* pairs are processed ``chunk`` tracks at a time so no [B, U, S] or [B, U, D] tensor covers
  more than ``chunk`` tracks (scoring 2,000 videos against 2,000 tracks at once would
  otherwise need several GB).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import MaDeConfig


def _identity_(linear: nn.Linear) -> None:
    nn.init.eye_(linear.weight)
    nn.init.zeros_(linear.bias)


class XPool(nn.Module):
    """Video-guided pooling of music tokens and the resulting retrieval score."""

    def __init__(self, cfg: MaDeConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.scale = d**-0.5
        self.norm_in = nn.LayerNorm(d)  # LN1, shared by the query and the snippets
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.out = nn.Linear(d, d)
        self.norm_attn = nn.LayerNorm(d)  # LN2
        self.proj = nn.Linear(d, d)
        self.norm_out = nn.LayerNorm(d)  # LN3
        for linear in (self.q, self.k, self.v, self.out, self.proj):
            _identity_(linear)

    # -- pieces ---------------------------------------------------------------------------
    def _query(self, video_emb: Tensor) -> Tensor:
        """h(v) [B, D] -> scaled query [B, D]."""
        return self.q(self.norm_in(video_emb)) * self.scale

    def _keys_values(self, music_tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Snippet tokens [U, S, D] -> keys [U, S, D] and out-projected values [U, S, D]."""
        d = music_tokens.shape[-1]
        weight = torch.cat([self.k.weight, self.out.weight @ self.v.weight])  # [2D,D]
        bias = torch.cat([self.k.bias, self.out.weight @ self.v.bias + self.out.bias])  # [2D]
        kv = nn.functional.linear(self.norm_in(music_tokens), weight, bias)  # [U,S,2D]
        keys, values = kv.split(d, dim=-1)
        return keys, values

    def _head(self, pooled: Tensor) -> Tensor:
        """Attention output [..., D] -> h1(M|v) [..., D] (not normalised)."""
        x = self.norm_attn(pooled)
        return self.norm_out(x + self.proj(x))

    @staticmethod
    def _cosine(video_emb: Tensor, music_emb: Tensor) -> Tensor:
        """cos(h(v), h1) over the last axis in float32; video_emb is already unit-norm."""
        music_emb = music_emb.float()
        dot = (music_emb * video_emb.float()).sum(dim=-1)
        return dot / music_emb.norm(dim=-1).clamp_min(1e-6)

    # -- entry points ---------------------------------------------------------------------
    def pool(self, video_emb: Tensor, music_tokens: Tensor, music_mask: Tensor) -> Tensor:
        """Matched pairs: h(v) [B, D], tokens [B, S, D], mask [B, S] -> h1(M|v) [B, D]."""
        q = self._query(video_emb)  # [B,D]
        keys, values = self._keys_values(music_tokens)  # [B,S,D] each
        logits = torch.bmm(keys, q[:, :, None]).squeeze(-1).float()  # [B,S,1] -> [B,S]
        attn = logits.masked_fill(~music_mask, float("-inf")).softmax(dim=-1)  # [B,S]
        pooled = torch.bmm(attn[:, None, :].to(values.dtype), values).squeeze(1)  # [B,D]
        return self._head(pooled)

    def paired(self, video_emb: Tensor, music_tokens: Tensor, music_mask: Tensor) -> Tensor:
        """Score of matched pairs: h(v) [B, D], tokens [B, S, D], mask [B, S] -> [B]."""
        return self._cosine(video_emb, self.pool(video_emb, music_tokens, music_mask))

    def pairwise(
        self, video_emb: Tensor, music_tokens: Tensor, music_mask: Tensor, chunk: int = 256
    ) -> Tensor:
        """Scores of all pairs: h(v) [B, D], tokens [U, S, D], mask [U, S] -> [B, U].

        At most ``chunk`` tracks are scored at once, bounding the working set to about
        ``4 * B * chunk * (S + 4 D)`` bytes.
        """
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        q = self._query(video_emb)  # [B,D]
        keys, values = self._keys_values(music_tokens)  # [U,S,D] each
        scores = []
        for u0 in range(0, keys.shape[0], chunk):
            k_c, v_c = keys[u0 : u0 + chunk], values[u0 : u0 + chunk]  # [Uc,S,D]
            m_c = music_mask[u0 : u0 + chunk]  # [Uc,S]
            logits = torch.matmul(k_c, q.T).float()  # [Uc,S,D]@[D,B] -> [Uc,S,B]
            logits = logits.masked_fill(~m_c[:, :, None], float("-inf"))
            attn = logits.softmax(dim=1)  # over S
            pooled = torch.bmm(attn.transpose(1, 2).to(v_c.dtype), v_c)  # [Uc,B,D]
            scores.append(self._cosine(video_emb[None], self._head(pooled)).T)  # [B,Uc]
        if not scores:
            return video_emb.new_zeros(video_emb.shape[0], 0, dtype=torch.float32)
        return torch.cat(scores, dim=1)  # [B,U]

    # -- cached keys and values (a catalogue encodes its tracks once) ----------------------
    def keys_values(self, music_tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Per-track part of X-Pool: tokens [U, S, D] -> keys, out-projected values [U, S, D].

        Independent of the video, so a catalogue computes it once per track.
        """
        return self._keys_values(music_tokens)

    def scores_from_kv(
        self, video_emb: Tensor, keys: Tensor, values: Tensor, music_mask: Tensor
    ) -> Tensor:
        """All pairs from cached keys/values: h(v) [B, D], keys/values [U, S, D], mask
        [U, S] -> scores [B, U] (callers chunk U)."""
        q = self._query(video_emb).to(keys.dtype)  # [B,D]
        logits = torch.matmul(keys, q.T).float()  # [U,S,D]@[D,B] -> [U,S,B]
        attn = logits.masked_fill(~music_mask[:, :, None], float("-inf")).softmax(dim=1)
        pooled = torch.bmm(attn.transpose(1, 2).to(values.dtype), values)  # [U,B,D]
        return self._cosine(video_emb[None], self._head(pooled)).T  # [U,B] -> [B,U]

    def paired_from_kv(
        self, video_emb: Tensor, keys: Tensor, values: Tensor, music_mask: Tensor
    ) -> Tensor:
        """Matched pairs from cached keys/values: h(v) [B, D], keys/values [B, S, D],
        mask [B, S] -> scores [B]."""
        q = self._query(video_emb).to(keys.dtype)  # [B,D]
        logits = torch.bmm(keys, q[:, :, None]).squeeze(-1).float()  # [B,S,1] -> [B,S]
        attn = logits.masked_fill(~music_mask, float("-inf")).softmax(dim=-1)  # [B,S]
        pooled = torch.bmm(attn[:, None, :].to(values.dtype), values).squeeze(1)  # [B,D]
        return self._cosine(video_emb, self._head(pooled))
