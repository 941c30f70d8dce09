"""X-Pool: video-guided attention pooling of a track's snippet tokens (the "single" score).

h1(M|v) = LN3(x + W_p x + b_p), x = LN2(out_proj(Attn(q(LN1 h(v)), k(LN1 M), v(LN1 M))))
with one head, a masked softmax over snippets and every projection identity-initialised;
the score is cos(h(v), h1(M|v)).

Exact rewrites keep the all-pairs version cheap:

* keys and values are linear maps of the layer-normed snippets n_s = LN1(m_s), so a
  catalogue caches n_s only ([S, D] per track, :meth:`XPool.snippet_states`) and moves
  the projections to the video's side: q . (W_k n_s + b_k) = (W_k^T q) . n_s + q . b_k,
  whose last term is the same for every snippet and cancels in the softmax; and since
  the attention weights sum to 1, W_o(sum_s a_s (W_v n_s + b_v)) + b_o =
  (W_o W_v)(sum_s a_s n_s) + W_o b_v + b_o, one [D, D] product per pair after pooling.
  A scan over a catalogue therefore reads D floats per snippet, not 2D (keys + values);
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

    def _token_query(self, video_emb: Tensor) -> Tensor:
        """h(v) [B, D] -> W_k^T q [B, D]: the query moved to the snippet states' space."""
        return self._query(video_emb) @ self.k.weight

    def _values_out(self, pooled_states: Tensor) -> Tensor:
        """sum_s a_s n_s [..., D] -> out-projected attention output W_o(W_v x + b_v) + b_o.

        Folding W_o W_v costs D^3 per call, applying the two layers 2 N D^2 for N rows:
        the cheaper order is taken (a catalogue scan calls this once per chunk of tracks,
        with N = chunk x videos, often below D)."""
        rows = pooled_states.numel() // pooled_states.shape[-1]
        if rows <= pooled_states.shape[-1]:
            return self.out(self.v(pooled_states))
        weight = self.out.weight @ self.v.weight
        bias = self.out.weight @ self.v.bias + self.out.bias
        return nn.functional.linear(pooled_states, weight.to(pooled_states.dtype),
                                    bias.to(pooled_states.dtype))

    def _pool_from_states(self, video_emb: Tensor, states: Tensor, music_mask: Tensor) -> Tensor:
        """Matched pairs: h(v) [B, D], states [B, S, D], mask [B, S] -> h1(M|v) [B, D]."""
        q = self._token_query(video_emb).to(states.dtype)  # [B,D]
        logits = torch.bmm(states, q[:, :, None]).squeeze(-1).float()  # [B,S,1] -> [B,S]
        attn = logits.masked_fill(~music_mask, float("-inf")).softmax(dim=-1)  # [B,S]
        pooled = torch.bmm(attn[:, None, :].to(states.dtype), states).squeeze(1)  # [B,D]
        return self._head(self._values_out(pooled))

    # -- per-track part (a catalogue encodes its tracks once) -----------------------------
    def snippet_states(self, music_tokens: Tensor) -> Tensor:
        """Snippet tokens [U, S, D] -> layer-normed states [U, S, D], of which the keys and
        values are linear maps. Independent of the video: a catalogue computes it once."""
        return self.norm_in(music_tokens)

    # -- entry points ---------------------------------------------------------------------
    def pool(self, video_emb: Tensor, music_tokens: Tensor, music_mask: Tensor) -> Tensor:
        """Matched pairs: h(v) [B, D], tokens [B, S, D], mask [B, S] -> h1(M|v) [B, D]."""
        return self._pool_from_states(video_emb, self.snippet_states(music_tokens), music_mask)

    def paired(self, video_emb: Tensor, music_tokens: Tensor, music_mask: Tensor) -> Tensor:
        """Score of matched pairs: h(v) [B, D], tokens [B, S, D], mask [B, S] -> [B]."""
        return self.paired_from_states(video_emb, self.snippet_states(music_tokens), music_mask)

    def paired_from_states(self, video_emb: Tensor, states: Tensor, music_mask: Tensor) -> Tensor:
        """Matched pairs from cached snippet states: h(v) [B, D], states [B, S, D],
        mask [B, S] -> scores [B]."""
        return self._cosine(video_emb, self._pool_from_states(video_emb, states, music_mask))

    def pairwise(
        self, video_emb: Tensor, music_tokens: Tensor, music_mask: Tensor, chunk: int = 64
    ) -> Tensor:
        """Scores of all pairs: h(v) [B, D], tokens [U, S, D], mask [U, S] -> [B, U].

        At most ``chunk`` tracks are scored at once, bounding the working set to about
        ``4 * B * chunk * (S + 5 D)`` bytes (64: ~0.7 GB for B = 2,000, S = 96, D = 256).
        """
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        states = self.snippet_states(music_tokens)  # [U,S,D]
        scores = [
            self.scores_from_states(
                video_emb, states[u0 : u0 + chunk], music_mask[u0 : u0 + chunk]
            )  # [B,Uc]
            for u0 in range(0, states.shape[0], chunk)
        ]
        if not scores:
            return video_emb.new_zeros(video_emb.shape[0], 0, dtype=torch.float32)
        return torch.cat(scores, dim=1)  # [B,U]

    def scores_from_states(self, video_emb: Tensor, states: Tensor, music_mask: Tensor) -> Tensor:
        """All pairs from cached snippet states in one go: h(v) [B, D], states [U, S, D],
        mask [U, S] -> scores [B, U] (builds [U, B, S] and [U, B, D]: callers chunk U)."""
        q = self._token_query(video_emb).to(states.dtype)  # [B,D]
        logits = torch.matmul(states, q.T).float()  # [U,S,D]@[D,B] -> [U,S,B]
        attn = logits.masked_fill(~music_mask[:, :, None], float("-inf")).softmax(dim=1)
        pooled = torch.bmm(attn.transpose(1, 2).to(states.dtype), states)  # [U,B,D]
        return self._cosine_all(video_emb, self._head(self._values_out(pooled)))  # [B,U]
