"""X-Pool: video-guided attention pooling of a track's snippet tokens (the "single" score).

h1(M|v) = LN3(x + W_p x + b_p), x = LN2(out_proj(Attn(q(LN1 h(v)), k(LN1 M), v(LN1 M))))
with one head, a masked softmax over snippets and every projection identity-initialised;
the score is cos(h(v), h1(M|v)).

Exact rewrites keep the all-pairs version cheap:

* the output projection is linear and the attention weights sum to 1, so it is folded into
  the values once per track, W_o(sum_s a_s v_s) + b_o = sum_s a_s (W_o v_s + b_o), instead of
  once per (video, track) pair; keys and these values depend on the track only, so a
  catalogue can cache them (:meth:`XPool.keys_values`);
* the residual x + W_p x is one matmul with (I + W_p), and the per-pair cosine is a batched
  matmul, saving two passes over the [B, U, D] pooled tensor;
* pairs are processed ``chunk`` tracks at a time so no [B, U, S] or [B, U, D] tensor covers
  more than ``chunk`` tracks (scoring 2,000 videos against 2,000 tracks at once would
  otherwise need several GB).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import MaDeConfig
from .layers import full_precision


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

    def _head(self, pooled: Tensor) -> Tensor:
        """Attention output [..., D] -> h1(M|v) [..., D] (not normalised)."""
        x = self.norm_attn(pooled)
        # x + W x + c as one matmul with (I + W): saves a full pass over [B, U, D].
        eye = torch.eye(x.shape[-1], dtype=self.proj.weight.dtype, device=x.device)
        return self.norm_out(nn.functional.linear(x, self.proj.weight + eye, self.proj.bias))

    @staticmethod
    def _cosine(video_emb: Tensor, music_emb: Tensor) -> Tensor:
        """cos(h(v), h1) of matched rows [B, D] in float32; video_emb is already unit-norm."""
        music_emb = music_emb.float()
        dot = (music_emb * video_emb.float()).sum(dim=-1)
        return dot / music_emb.norm(dim=-1).clamp_min(1e-6)

    @staticmethod
    def _cosine_all(video_emb: Tensor, music_emb: Tensor) -> Tensor:
        """cos(h(v_b), h1[u, b]) for music_emb [Uc, B, D] -> [B, Uc] in float32."""
        with full_precision(music_emb):
            music_emb = music_emb.float()
            # The per-pair dot as a batched matmul over videos: much faster than mul + sum.
            dot = torch.bmm(music_emb.transpose(0, 1), video_emb.float()[:, :, None])  # [B,Uc,1]
            norm = torch.linalg.vector_norm(music_emb, dim=-1).clamp_min(1e-6)  # [Uc,B]
            return dot.squeeze(-1) / norm.T  # [B,Uc]

    def _pool_from_kv(
        self, video_emb: Tensor, keys: Tensor, values: Tensor, music_mask: Tensor
    ) -> Tensor:
        """Matched pairs: h(v) [B, D], keys/values [B, S, D], mask [B, S] -> h1(M|v) [B, D]."""
        q = self._query(video_emb).to(keys.dtype)  # [B,D]
        logits = torch.bmm(keys, q[:, :, None]).squeeze(-1).float()  # [B,S,1] -> [B,S]
        attn = logits.masked_fill(~music_mask, float("-inf")).softmax(dim=-1)  # [B,S]
        pooled = torch.bmm(attn[:, None, :].to(values.dtype), values).squeeze(1)  # [B,D]
        return self._head(pooled)

    # -- per-track part (a catalogue encodes its tracks once) -----------------------------
    def keys_values(self, music_tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Snippet tokens [U, S, D] -> keys [U, S, D] and out-projected values [U, S, D].

        Independent of the video, so a catalogue computes it once per track.
        """
        d = music_tokens.shape[-1]
        weight = torch.cat([self.k.weight, self.out.weight @ self.v.weight])  # [2D,D]
        bias = torch.cat([self.k.bias, self.out.weight @ self.v.bias + self.out.bias])  # [2D]
        kv = nn.functional.linear(self.norm_in(music_tokens), weight, bias)  # [U,S,2D]
        keys, values = kv.split(d, dim=-1)
        return keys, values

    # -- entry points ---------------------------------------------------------------------
    def pool(self, video_emb: Tensor, music_tokens: Tensor, music_mask: Tensor) -> Tensor:
        """Matched pairs: h(v) [B, D], tokens [B, S, D], mask [B, S] -> h1(M|v) [B, D]."""
        return self._pool_from_kv(video_emb, *self.keys_values(music_tokens), music_mask)

    def paired(self, video_emb: Tensor, music_tokens: Tensor, music_mask: Tensor) -> Tensor:
        """Score of matched pairs: h(v) [B, D], tokens [B, S, D], mask [B, S] -> [B]."""
        return self.paired_from_kv(video_emb, *self.keys_values(music_tokens), music_mask)

    def paired_from_kv(
        self, video_emb: Tensor, keys: Tensor, values: Tensor, music_mask: Tensor
    ) -> Tensor:
        """Matched pairs from cached keys/values: h(v) [B, D], keys/values [B, S, D],
        mask [B, S] -> scores [B]."""
        return self._cosine(video_emb, self._pool_from_kv(video_emb, keys, values, music_mask))

    def pairwise(
        self, video_emb: Tensor, music_tokens: Tensor, music_mask: Tensor, chunk: int = 64
    ) -> Tensor:
        """Scores of all pairs: h(v) [B, D], tokens [U, S, D], mask [U, S] -> [B, U].

        At most ``chunk`` tracks are scored at once, bounding the working set to about
        ``4 * B * chunk * (S + 4 D)`` bytes (64: ~0.6 GB for B = 2,000, S = 96, D = 256).
        """
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        keys, values = self.keys_values(music_tokens)  # [U,S,D] each
        scores = [
            self.scores_from_kv(
                video_emb, keys[u0 : u0 + chunk], values[u0 : u0 + chunk],
                music_mask[u0 : u0 + chunk],
            )  # [B,Uc]
            for u0 in range(0, keys.shape[0], chunk)
        ]
        if not scores:
            return video_emb.new_zeros(video_emb.shape[0], 0, dtype=torch.float32)
        return torch.cat(scores, dim=1)  # [B,U]

    def scores_from_kv(
        self, video_emb: Tensor, keys: Tensor, values: Tensor, music_mask: Tensor
    ) -> Tensor:
        """All pairs from cached keys/values in one go: h(v) [B, D], keys/values [U, S, D],
        mask [U, S] -> scores [B, U] (builds [U, B, S] and [U, B, D]: callers chunk U)."""
        q = self._query(video_emb).to(keys.dtype)  # [B,D]
        logits = torch.matmul(keys, q.T).float()  # [U,S,D]@[D,B] -> [U,S,B]
        attn = logits.masked_fill(~music_mask[:, :, None], float("-inf")).softmax(dim=1)
        pooled = torch.bmm(attn.transpose(1, 2).to(values.dtype), values)  # [U,B,D]
        return self._cosine_all(video_emb, self._head(pooled))  # [B,U]
