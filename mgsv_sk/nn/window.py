"""Window head: ground a video by scoring every candidate window of its track.

In MGSV-EC a moment is as long as its video (within 1 s on every val/test row), so
grounding is choosing **where the moment starts** in [0, track - video]. The head lays
candidate starts on a grid (``windows_per_snippet`` per 2.5 s snippet hop: one every 1.25 s
by default), gives each candidate the video's length, and scores it from evidence read
over the window:

* temporal alignment: frame f plays over music time start + f, i.e. snippet position
  (start + f) / 2.5. Per head, the cosine of each frame with the (linearly interpolated)
  snippet it plays over, averaged over the frames: a matched filter along the window's
  diagonal of the frame x snippet similarity map;
* a moment signature without alignment: the mean and a smooth maximum over frames of each
  snippet's similarity, and each snippet's similarity to the whole video's embedding h(v),
  averaged over the snippets inside the window;
* the track's own content: learned per-snippet channels of the contextual music tokens
  (what makes a section the one people use, e.g. a chorus), averaged over the window;
* where it sits: the start in seconds and relative to the track, whether it is 0, the
  room the track leaves after it, the video's and the track's lengths, and a learned prior
  per grid position.

A per-candidate MLP with two residual convolutions along the candidate axis (is this
window the local peak?) gives every candidate a logit and a start offset within one grid
step (boundary refinement). The logits carry a learned bias so that, trained against the
other tracks of a batch (:func:`mgsv_sk.nn.losses.window_terms`), the sigmoid of the best
candidate's logit is the probability that the track holds a fitting moment for the video.

The track's end as the head knows it is the centre of its last valid snippet (snippet k is
valid when its centre 2.5 k s lies inside the track, so the track lasts at least that
long), capped at 240 s: every window lies inside it when the video fits in the track; a
video longer than its track gets the one window [0, video length].
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import MaDeConfig

SNIPPET_HOP = 2.5  # seconds between snippet centres
MAX_SECONDS = 240.0  # tracks are cut here
CONTENT_CHANNELS = 4  # learned per-snippet content channels of the track
N_POSITION_FEATURES = 6


class WindowScores(NamedTuple):
    """Candidate windows of B (video, track) pairs, K = ``windows_per_snippet`` * S.

    anchors [B, K] grid starts (seconds); starts, ends [B, K] the refined windows
    (seconds, inside the track); logits [B, K] float32, -inf on candidates that are not
    windows of the track (sigmoid = moment score); snippet_logits [B, S] float32 per-snippet
    evidence (-inf on padding).
    """

    anchors: Tensor
    starts: Tensor
    ends: Tensor
    logits: Tensor
    snippet_logits: Tensor


def _positions(mask_row: Tensor) -> Tensor:
    """0, 1, ..., T - 1 as float [T], built from a tensor so exported graphs keep T dynamic."""
    return torch.ones_like(mask_row, dtype=torch.float32).cumsum(0) - 1.0


class WindowHead(nn.Module):
    """Scores every candidate window of a track for a video (see the module docstring)."""

    def __init__(self, cfg: MaDeConfig) -> None:
        super().__init__()
        d, h = cfg.d_model, cfg.n_heads
        hidden = cfg.window_hidden
        self.n_heads = h
        self.per_snippet = cfg.windows_per_snippet
        self.step = SNIPPET_HOP / cfg.windows_per_snippet
        self.video = nn.Linear(d, d)  # frame and snippet projections of the similarity map
        self.music = nn.Linear(d, d)
        self.whole = nn.Linear(d, d)  # h(v) in the snippets' projection
        self.content = nn.Linear(d, CONTENT_CHANNELS)
        self.log_sharpness = nn.Parameter(torch.tensor(2.3))  # smooth-max sharpness ~10
        n_snippet = 3 * h + CONTENT_CHANNELS
        self.snippet_head = nn.Linear(n_snippet, 1)
        self.inp = nn.Linear(h + n_snippet + N_POSITION_FEATURES, hidden)
        self.prior = nn.Embedding(cfg.max_snippets * cfg.windows_per_snippet, hidden)
        nn.init.zeros_(self.prior.weight)
        self.context = nn.ModuleList(nn.Conv1d(hidden, hidden, 5, padding=2) for _ in range(2))
        self.context_norm = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(2))
        self.out = nn.Linear(hidden, 2)  # logit, start offset
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, video_tokens: Tensor, video_mask: Tensor, video_emb: Tensor,
                music_tokens: Tensor, music_mask: Tensor, video_seconds: Tensor) -> WindowScores:
        """video_tokens [B, F, D], video_mask [B, F], video_emb [B, D], music_tokens
        [B, S, D] (video b's track), music_mask [B, S], video_seconds [B] (the moment's
        length) -> :class:`WindowScores`."""
        b, f, _ = video_tokens.shape
        s = music_tokens.shape[1]
        h = self.n_heads
        # -- frame x snippet similarity, per head ----------------------------------------
        v = F.normalize(self.video(video_tokens).float().view(b, f, h, -1), dim=-1)  # [B,F,H,Dh]
        m = F.normalize(self.music(music_tokens).float().view(b, s, h, -1), dim=-1)  # [B,S,H,Dh]
        frame_ok = video_mask[:, None, :, None]  # [B,1,F,1]
        sim = torch.einsum("bfhe,bshe->bhfs", v, m).masked_fill(~frame_ok, 0.0)  # [B,H,F,S]
        n_frames = video_mask.sum(dim=1).float()  # [B], >= 1
        mean_f = sim.sum(dim=2) / n_frames[:, None, None]  # [B,H,S]
        sharp = self.log_sharpness.exp()
        # scale before masking: -inf * sharpness would give the sharpness a NaN gradient
        smax_f = torch.logsumexp((sim * sharp).masked_fill(~frame_ok, float("-inf")), 2) / sharp
        whole = F.normalize(self.whole(video_emb).float().view(b, h, -1), dim=-1)  # [B,H,Dh]
        to_whole = torch.einsum("bhe,bshe->bhs", whole, m)  # [B,H,S]
        content = self.content(music_tokens).float().transpose(1, 2)  # [B,S,G] -> [B,G,S]
        per_snippet = torch.cat([mean_f, smax_f, to_whole, content], dim=1)  # [B,C,S]
        snippet_logits = self.snippet_head(per_snippet.transpose(1, 2)).squeeze(-1)  # [B,S]

        # -- candidate windows -----------------------------------------------------------
        snippet_index = _positions(music_mask[0])  # [S]
        sub = torch.arange(self.per_snippet, dtype=torch.float32, device=music_mask.device)
        grid = (snippet_index[:, None] * self.per_snippet + sub[None, :]).reshape(-1)  # [K]
        anchors = grid * self.step  # [K] seconds
        n_snippets = music_mask.sum(dim=1).float()  # [B]
        track = ((n_snippets - 1.0) * SNIPPET_HOP).clamp(max=MAX_SECONDS)  # [B]
        seconds = video_seconds.float()
        room = (track - seconds).clamp(min=0.0)  # [B], the latest start inside the track
        valid = anchors[None, :] <= room[:, None] + 1e-4  # [B,K]; anchor 0 always valid

        # alignment: frame j over snippet position (anchor + j) / 2.5, interpolated
        pos = (anchors[:, None] + _positions(video_mask[0])[None, :]) / SNIPPET_HOP  # [K,F]
        lo = pos.floor()
        frac = (pos - lo).T[None, None]  # [1,1,F,K]
        last = snippet_index[-1].long()  # S - 1, kept dynamic
        lo_i = torch.minimum(lo.long(), last).T  # [F,K]
        hi_i = torch.minimum(lo_i + 1, last)
        index_lo = lo_i[None, None].expand(b, h, -1, -1)  # [B,H,F,K]
        index_hi = hi_i[None, None].expand(b, h, -1, -1)
        along = sim.gather(3, index_lo) * (1.0 - frac) + sim.gather(3, index_hi) * frac
        aligned = along.sum(dim=2) / n_frames[:, None, None]  # [B,H,K]

        # bag: mean of the per-snippet features over the snippets whose centre is inside
        csum = F.pad(per_snippet.cumsum(dim=2), (1, 0))  # [B,C,S+1]
        end_snip = torch.floor((anchors[None, :] + seconds[:, None]) / SNIPPET_HOP + 1e-6)
        end_snip = torch.minimum(end_snip, n_snippets[:, None] - 1.0)  # [B,K]
        first = torch.ceil(anchors / SNIPPET_HOP - 1e-6)[None, :]  # [1,K]
        first = torch.minimum(first.expand_as(end_snip), end_snip)  # >= 1 snippet per window
        count = (end_snip - first + 1.0)[:, None]  # [B,1,K]
        c = per_snippet.shape[1]
        bag = (csum.gather(2, (end_snip + 1.0).long()[:, None].expand(-1, c, -1))
               - csum.gather(2, first.long()[:, None].expand(-1, c, -1))) / count  # [B,C,K]

        # where the window sits
        a = anchors[None, :].expand(b, -1)  # [B,K]
        where = torch.stack([
            a / MAX_SECONDS,
            a / track.clamp(min=SNIPPET_HOP)[:, None],
            (a == 0).float(),
            (room[:, None] - a) / MAX_SECONDS,
            (seconds / MAX_SECONDS)[:, None].expand_as(a),
            (track / MAX_SECONDS)[:, None].expand_as(a),
        ], dim=-1)  # [B,K,6]

        # -- per-candidate network -------------------------------------------------------
        feats = torch.cat([aligned.transpose(1, 2), bag.transpose(1, 2), where], dim=-1)
        keep = valid[..., None].float()  # [B,K,1]
        x = (self.inp(feats.to(self.inp.weight.dtype)) + self.prior(grid.long())) * keep
        for conv, norm in zip(self.context, self.context_norm):
            x = x + conv(F.gelu(norm(x)).transpose(1, 2)).transpose(1, 2) * keep  # [B,K,H']
        out = self.out(F.gelu(x)).float()  # [B,K,2]
        logits = (out[..., 0] + self.bias).masked_fill(~valid, float("-inf"))
        offset = torch.tanh(out[..., 1]) * self.step
        starts = torch.minimum((a + offset).clamp(min=0.0), room[:, None])  # [B,K]
        ends = (starts + seconds[:, None]).clamp(max=MAX_SECONDS)
        snippet_logits = snippet_logits.float().masked_fill(~music_mask, float("-inf"))
        return WindowScores(a, starts, ends, logits, snippet_logits)
