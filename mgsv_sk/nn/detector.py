"""DETR-style moment detector with a single query.

The memory is the concatenation of a video's frame tokens and its track's snippet tokens,
[B, F + S, D]. Each modality has its own sine position code indexed within the modality plus a
learned modality-type embedding, so snippet positions do not move when the video is longer
(the public code runs one code over the concatenated sequence). A post-norm transformer
encoder refines the memory; a post-norm decoder refines ONE query whose content is the
projected video embedding h(v) and whose position is a learned, trained vector. Shared heads
read every decoder layer (auxiliary losses): a sigmoid span MLP giving (center, width) in
units of 240 s and a 2-class foreground classifier (index 0 = foreground).

Two additions to the paper's detector (both measured on synthetic data to be what lets it
learn in a few epochs, see the README):

* the query content also carries the video's length (a learned map of the sine code of its
  number of valid frames): the moment's length equals the video's in MGSV-EC, yet a masked
  mean h(v) and softmax attention are blind to the number of frames;
* a per-snippet evidence head reads the encoded snippet tokens and is trained to say which
  snippets lie inside the moment (dense supervision in the spirit of Moment-DETR's
  saliency loss); its logits are returned for inspection and plots.

With one query the decoder is computed exactly but cheaply:

* self-attention over a single token has softmax weight 1, so it equals
  out_proj(v_proj(tgt)); dropout on that weight is dropout of each head's value;
* cross-attention never projects the memory: per head, q . (W_k m_t + b_k) equals
  (W_k^T q) . m_t plus a term constant over t that the softmax cancels, and
  sum_t a_t (W_v m_t + b_v) = W_v (sum_t a_t m_t) + b_v sum_t a_t. The cost per layer falls
  from O(T D^2) to O(T D H) per video, and the memory is shared by all layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import MaDeConfig
from .layers import (
    MLP,
    Dropout,
    EncoderLayer,
    FeedForward,
    SinePositionCode,
    attention_mask,
    compute_dtype,
    unit,
    xavier_init_,
)

FOREGROUND = 0  # class index of the foreground logit


class SingleQueryCrossAttention(nn.Module):
    """Multi-head attention of one query [B, D] over a memory [B, T, D] (exact, see module doc).

    Parameters mirror ``nn.MultiheadAttention`` (q, k, v and output projections) so a
    generic implementation with the same weights gives the same result.
    """

    def __init__(self, d_model: int, n_heads: int, attn_dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.attn_dropout = attn_dropout
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, query: Tensor, keys_t: Tensor, values: Tensor, mask: Tensor,
                bias: Tensor | None = None) -> Tensor:
        """query [B, D] (with its position), keys_t = (memory + pos) transposed [B, D, T],
        values = memory [B, T, D], mask [B, T] bool -> [B, D]."""
        b, d = query.shape
        h = self.n_heads
        dh = d // h
        q = (self.q(query) * dh**-0.5).view(b, h, dh)  # [B,H,Dh]
        w_k = self.k.weight.view(h, dh, d)  # [H,Dh,D]
        q_mem = torch.einsum("bhe,hed->bhd", q, w_k)  # [B,H,D], W_k^T q per head
        logits = torch.bmm(q_mem.to(keys_t.dtype), keys_t).float()  # [B,H,T]
        if bias is not None:
            logits = logits + bias[:, None, :]  # [B,T] -> [B,1,T]
        logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
        attn = F.dropout(logits.softmax(dim=-1), self.attn_dropout, self.training)  # [B,H,T]
        pooled = torch.bmm(attn.to(values.dtype), values)  # [B,H,D]
        w_v = self.v.weight.view(h, dh, d)  # [H,Dh,D]
        o = torch.einsum("bhd,hed->bhe", pooled, w_v)  # [B,H,Dh]
        o = o + self.v.bias.view(h, dh) * attn.sum(dim=-1, keepdim=True).to(o.dtype)
        return self.out(o.reshape(b, d))  # [B,H,Dh] -> [B,D]


class SingleQueryDecoderLayer(nn.Module):
    """Post-norm DETR decoder layer (self-attn, cross-attn, FFN) for exactly one query."""

    def __init__(self, d_model: int, n_heads: int, d_ffn: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        # Self-attention over one token needs only the value and output projections; the
        # query/key projections of a generic layer would receive no gradient.
        self.self_v = nn.Linear(d_model, d_model)
        self.self_out = nn.Linear(d_model, d_model)
        self.cross = SingleQueryCrossAttention(d_model, n_heads, dropout)
        self.ffn = FeedForward(d_model, d_ffn, "relu", dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.drop1 = Dropout(dropout)
        self.drop2 = Dropout(dropout)
        self.drop3 = Dropout(dropout)

    def _self_attention(self, tgt: Tensor) -> Tensor:
        b, d = tgt.shape
        v = self.self_v(tgt).view(b, self.n_heads, d // self.n_heads)  # [B,H,Dh]
        if self.training and self.dropout > 0:
            # Dropout of the single attention weight (value 1) of each head.
            v = v * F.dropout(v.new_ones(b, self.n_heads, 1), self.dropout)
        return self.self_out(v.reshape(b, d))  # [B,H,Dh] -> [B,D]

    def forward(
        self, tgt: Tensor, query_pos: Tensor, keys_t: Tensor, values: Tensor, mask: Tensor,
        bias: Tensor | None = None,
    ) -> Tensor:
        """tgt [B, D], query_pos [D], keys_t [B, D, T], values [B, T, D], mask [B, T] -> [B, D]."""
        tgt = self.norm1(tgt + self.drop1(self._self_attention(tgt)))
        tgt = self.norm2(tgt + self.drop2(self.cross(tgt + query_pos, keys_t, values, mask, bias)))
        return self.norm3(tgt + self.drop3(self.ffn(tgt)))


class CrossModalEvidence(nn.Module):
    """How well each snippet matches the video: per head, the cosine similarity of the
    snippet to every valid frame in learned projections, reduced by a smooth maximum and a
    mean over frames, mapped back to D and added to the snippet's token.

    Softmax attention alone makes "is there a frame like me?" hard to express (its output
    is an average whose size does not tell how well anything matched); the similarity map
    states it directly, at O(B S F D) cost.
    """

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.video = nn.Linear(d_model, d_model)
        self.music = nn.Linear(d_model, d_model)
        self.out = nn.Linear(2 * n_heads, d_model)
        self.log_sharpness = nn.Parameter(torch.tensor(2.3))  # smooth-max sharpness ~10

    def forward(self, video: Tensor, video_mask: Tensor, music: Tensor) -> Tensor:
        """video [B, F, D], video_mask [B, F], music [B, S, D] -> evidence [B, S, D]."""
        b, f, d = video.shape
        h = self.n_heads
        v = unit(self.video(video).float().view(b, f, h, d // h), dim=-1)  # [B,F,H,Dh]
        m = unit(self.music(music).float().view(b, -1, h, d // h), dim=-1)  # [B,S,H,Dh]
        sim = torch.einsum("bshe,bfhe->bhsf", m, v)  # [B,H,S,F]
        valid = video_mask[:, None, None, :]  # [B,1,1,F]
        sharp = self.log_sharpness.exp()
        # scale before masking: -inf * sharpness would give the sharpness a NaN gradient
        smooth_max = torch.logsumexp((sim * sharp).masked_fill(~valid, float("-inf")), -1) / sharp
        mean = (sim * valid).sum(-1) / valid.sum(-1)  # [B,H,S]
        feats = torch.cat([smooth_max, mean], dim=1).transpose(1, 2)  # [B,2H,S] -> [B,S,2H]
        return self.out(feats.to(music.dtype))


class MomentDetector(nn.Module):
    """Memory encoder + single-query decoder + span / foreground heads."""

    def __init__(self, cfg: MaDeConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.video_pos = SinePositionCode(cfg.max_frames, d)
        self.music_pos = SinePositionCode(cfg.max_snippets, d)
        self.modality = nn.Parameter(torch.randn(2, d))  # [video, music] type embeddings
        self.evidence = CrossModalEvidence(d, cfg.n_heads)
        self.encoder = nn.ModuleList(
            EncoderLayer(
                d,
                cfg.n_heads,
                cfg.d_ffn,
                dropout=cfg.detector_dropout,
                attn_dropout=0.0,
                activation="relu",
                norm_first=False,
                ffn_dropout=True,
            )
            for _ in range(cfg.encoder_layers)
        )
        self.query_content = nn.Linear(d, d)  # h(v) -> query content
        self.query_length = nn.Linear(d, d)  # sine code of the video's length -> query content
        self.snippet_head = nn.Linear(d, 1)  # per-snippet evidence: inside the moment or not
        self.query_pos = nn.Parameter(torch.randn(d))  # learned and trained (public code: not)
        self.decoder = nn.ModuleList(
            SingleQueryDecoderLayer(d, cfg.n_heads, cfg.d_ffn, cfg.detector_dropout)
            for _ in range(cfg.decoder_layers)
        )
        self.decoder_norm = nn.LayerNorm(d)  # shared by all layer outputs (DETR)
        self.span_head = MLP(d, d, 2, cfg.span_mlp_layers)
        self.fg_head = nn.Linear(d, 2)
        xavier_init_(self.encoder)
        xavier_init_(self.decoder)

    def memory_position(self, n_frames: int, n_snippets: int) -> Tensor:
        """Position code of the concatenated memory, [F + S, D] (same for every sample)."""
        video = self.video_pos(n_frames) + self.modality[0]  # [F,D]
        music = self.music_pos(n_snippets) + self.modality[1]  # [S,D]
        return torch.cat([video, music], dim=0)  # [T,D]

    def forward(
        self,
        video_tokens: Tensor,
        video_mask: Tensor,
        video_emb: Tensor,
        music_tokens: Tensor,
        music_mask: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Ground each video on its (already gathered) track.

        video_tokens [B, F, D], video_mask [B, F], video_emb [B, D], music_tokens [B, S, D],
        music_mask [B, S] -> spans [L, B, 2] (center, width in units of 240 s, sigmoid),
        fg_logits [L, B, 2] (float32), one row per decoder layer, the last one final, and
        snippet_logits [B, S] (float32; padded snippets hold -inf).
        """
        pos = self.memory_position(video_tokens.shape[1], music_tokens.shape[1])  # [T,D]
        music_tokens = music_tokens + self.evidence(video_tokens, video_mask, music_tokens)
        memory = torch.cat([video_tokens, music_tokens], dim=1)  # [B,T,D]
        mask = torch.cat([video_mask, music_mask], dim=1)  # [B,T]
        attn_mask = attention_mask(mask)  # [B,1,1,T]
        for layer in self.encoder:
            memory = layer(memory, attn_mask, pos)
        # Shared by all decoder layers: cast once (not once per layer under autocast) and
        # store keys transposed for the [B,H,D] @ [B,D,T] score product.
        dtype = compute_dtype(memory)
        keys_t = (memory + pos).transpose(1, 2).to(dtype).contiguous()  # [B,D,T]
        # Values carry the position code too, so what the query reads tells *where* it
        # looked (DETR's values omit it, leaving the span head to infer positions).
        values = (memory + pos).to(dtype)  # [B,T,D]
        n_video = video_tokens.shape[1]
        music_memory = memory[:, n_video:]  # [B,T,D] -> [B,S,D]
        snippet_logits = self.snippet_head(music_memory).squeeze(-1).float()  # [B,S,1] -> [B,S]
        # The decoder's attention to a snippet is raised by that snippet's evidence.
        bias = F.pad(snippet_logits, (n_video, 0))  # [B,S] -> [B,T], 0 on video positions
        n_frames = video_mask.sum(dim=1)  # [B], >= 1
        length_code = self.video_pos.code[n_frames - 1].to(video_emb.dtype)  # [B,D]
        tgt = self.query_content(video_emb) + self.query_length(length_code)  # [B,D]
        outputs = []
        for dec_layer in self.decoder:
            tgt = dec_layer(tgt, self.query_pos, keys_t, values, mask, bias)
            outputs.append(tgt)
        hidden = self.decoder_norm(torch.stack(outputs))  # [L,B,D]
        spans = torch.sigmoid(self.span_head(hidden).float())  # [L,B,2]
        fg_logits = self.fg_head(hidden).float()  # [L,B,2]
        snippet_logits = snippet_logits.masked_fill(~music_mask, float("-inf"))
        return spans, fg_logits, snippet_logits
