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
* the onset: all of the above (and each snippet's evidence logit) read at the snippet the
  window starts on and at the one before it, so the first snippet of a section is told
  from the snippets inside it;
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

from mgsv_sk.data.spans import MAX_MUSIC_SECONDS, SNIPPET_HOP_SECONDS

from .config import MaDeConfig
from .layers import full_precision, unit

CONTENT_CHANNELS = 4  # learned per-snippet content channels of the track
N_POSITION_FEATURES = 6
CONTEXT_WIDTH = 5  # candidates seen by one context layer (2 on each side: +-2.5 s)


class _Evidence(NamedTuple):
    """What the window scorer reads of P (video, track) pairs: sim [P, H, F, S] frame-to-
    snippet cosines per head (0 on padded frames; None without a gradient to carry, when
    nothing reads the map whole); frames [B, H, F, Dh] and snippets [P, H,
    S, Dh] the unit projections it is made of (the frames per video); per_snippet [P, C, S]
    features, their evidence logit last; logits [P, S] that logit; the pairs' video_mask
    [P, F], music_mask [P, S] and moment lengths seconds [P]."""

    sim: Tensor | None
    frames: Tensor
    snippets: Tensor
    per_snippet: Tensor
    logits: Tensor
    video_mask: Tensor
    music_mask: Tensor
    seconds: Tensor


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


def _depthwise(x: Tensor, weight: Tensor) -> Tensor:
    """Per-channel convolution along axis 1, zero-padded: x [P, K, C], weight [W, C] (W odd)
    -> [P, K, C], out[:, k] = sum_i weight[i] * x[:, k + i - W // 2]."""
    half = weight.shape[0] // 2
    if not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        # without a gradient: one grouped convolution (one graph step, not 16)
        return F.conv1d(x.transpose(1, 2), weight.T[:, None, :], padding=half,
                        groups=x.shape[2]).transpose(1, 2)
    padded = F.pad(x, (0, 0, half, half))  # [P,K+W-1,C]
    k = x.shape[1]
    return sum((padded[:, i : i + k] * weight[i] for i in range(weight.shape[0])),
               torch.zeros_like(x))


def _along_windows(sim: Tensor, pos: Tensor, snippet_index: Tensor) -> Tensor:
    """sum_f of sim[p, h, f, .] linearly interpolated at snippet position pos[k, f]: sim
    [P, H, F, S], pos [K, F] (>= 0), snippet_index [S] (0..S-1) -> [P, H, K].

    Interpolation is a hat kernel, hat[f, s, k] = max(0, 1 - |pos[k, f] - s|), and the sum
    one matmul with it (a gather's backward would scatter, slow on a CPU). Training's form;
    without a gradient to carry, :func:`_along_windows_factored` gives the same sums.
    """
    hat = (1.0 - (pos.T[:, None, :] - snippet_index[None, :, None]).abs()).clamp(min=0.0)
    p, h = sim.shape[:2]
    return (sim.flatten(2).flatten(0, 1) @ hat.flatten(0, 1)).view(p, h, -1)  # [P*H,K]


def _along_windows_factored(frames: Tensor, snippets: Tensor, video_index: Tensor,
                            per_snippet: int, snippet_index: Tensor) -> Tensor:
    """:func:`_along_windows` of sim = frames . snippets, with the frames summed first:
    frames [B, H, F, Dh] per video (0 on padded frames), snippets [P, H, S, Dh] per pair,
    video_index [P] (pair p's video), snippet_index [S] -> [P, H, K], K = per_snippet * S.

    Candidate k = per_snippet * j + r starts r / per_snippet of a hop after snippet j, so
    its frame f plays at snippet position j + u[r, f], u = (r * step + f) / hop, between
    snippets j + floor(u) and the next: the sum is sum_m snippets[p, :, j + m] .
    G[video, (m, r)] with G = sum_f hat(u[r, f] - m) frames[:, :, f], a few rows per video
    (m < I, about F / 2.5 + 2), shared by its pairs. Each pair's products with them, X [P,
    H, S, I * R], about the size of the frame x snippet map, are read along their diagonals
    by one gather of rows: a fifth of the rows the map's two-snippet gather read, and no
    per-frame interpolation weights (the hat is inside G). Snippets past the last (j + m >
    S - 1) read a zero row, as positions past the track add nothing in the hat matmul.
    """
    h, p, s = frames.shape[1], snippets.shape[0], snippet_index.shape[0]
    hop = SNIPPET_HOP_SECONDS
    phase = torch.arange(per_snippet, dtype=torch.float32, device=frames.device)  # r
    u = (phase[:, None] * (hop / per_snippet) + _positions(frames[0, 0, :, 0])[None, :]) / hop
    n_reach = torch.floor(u[-1, -1]) + 2.0  # I, from a tensor so exported graphs follow F
    reach = torch.arange(end=n_reach, dtype=torch.float32,  # type: ignore[call-overload]
                         device=frames.device)  # m = 0 .. I - 1 (a tensor end: traced as one)
    hat = (1.0 - (u[None] - reach[:, None, None]).abs()).clamp(min=0.0)  # [I,R,F]
    g = hat.flatten(0, 1) @ frames  # [I*R,F] @ [B,H,F,Dh] -> [B,H,I*R,Dh]
    x = snippets @ g[video_index].transpose(2, 3)  # [P,H,S,I*R]
    rows = x.permute(2, 3, 0, 1).reshape(-1, p * h)  # [S*I*R, P*H]: whole rows gathered
    rows = torch.cat([rows, torch.zeros_like(rows[:1])])  # the zero row, past the last
    width = n_reach * per_snippet  # I*R rows per snippet
    j, m = snippet_index[:, None, None], reach[None, None, :]
    at = (j + m) * width + m * per_snippet + phase[None, :, None]  # [S,R,I]
    at = torch.where(j + m > snippet_index[-1], (snippet_index[-1] + 1.0) * width, at)
    picked = rows.index_select(0, at.long().flatten())  # [S*R*I, P*H]
    summed = picked.view(s * per_snippet, -1, p * h).sum(dim=1)  # [K, P*H]
    return summed.T.reshape(p, h, -1)


#: Above this smooth-max sharpness, exp(sharpness * cosine) may leave float32's normal range
#: (e^-2s at a cosine of -1), and the frames' smooth maximum is taken with its max shift
_UNSHIFTED_SHARPNESS = 40.0


def _smooth_max_frames(sim: Tensor, video_mask: Tensor, sharp: Tensor) -> Tensor:
    """log sum_f exp(sharp * sim[:, :, f]) / sharp over each pair's frames: sim [P, H, F, S],
    video_mask [P, F] -> [P, H, S]. Written out (a detached max, exp, sum, log): the same
    value and gradient as logsumexp, and onnxruntime runs it ~4x faster than its
    ReduceLogSumExp kernel. Scaled before masking: -inf * sharpness would give the
    sharpness a NaN gradient; the mask an additive [P, 1, F, 1] (a broadcast add, not a
    select over the map)."""
    frame_ok = video_mask[:, None, :, None]  # [P,1,F,1]
    padded = torch.zeros_like(frame_ok, dtype=sim.dtype).masked_fill(~frame_ok, float("-inf"))
    scaled = sim * sharp + padded  # [P,H,F,S], -inf on padded frames
    top = scaled.amax(dim=2, keepdim=True).detach()  # finite: a pair has >= 1 frame
    return (top.squeeze(2) + (scaled - top).exp().sum(dim=2).log()) / sharp


def _frame_reads(frames: Tensor, snippets: Tensor, video_index: Tensor, video_mask: Tensor,
                 sharp: Tensor) -> tuple[Tensor, Tensor]:
    """The mean and the smooth maximum over each pair's frames of the frame-to-snippet
    cosines, without a gradient to carry: frames [B, H, F, Dh] unit per video (0 on padded
    frames), snippets [P, H, S, Dh] unit per pair, video_index [P], video_mask [P, F] ->
    ([P, H, S], [P, H, S]).

    The mean is linear: the frames summed per video, one product per pair. The smooth
    maximum needs no max shift while e^sharpness stays far inside float32 (a cosine is at
    most 1): the sharpness goes into the frames before the product, and the padded frames
    (cosine 0, e^0 = 1) are left out by summing the exponentials through a matmul with the
    mask. Three passes over the [P, H, F, S] map (product, exp, sum) where the training
    form makes seven; beyond :data:`_UNSHIFTED_SHARPNESS`, that form.
    """
    n_frames = video_mask.sum(dim=1).float()[:, None, None]  # [P,1,1]
    # the products put the snippets first ([P, H, S, .]): the frames' side is transposed per
    # video, a few KB, where the other way round would copy every pair's snippets
    total = frames.sum(dim=2)[..., None][video_index]  # [P,H,Dh,1]
    mean_f = (snippets @ total).squeeze(3) / n_frames  # [P,H,S]
    if float(sharp) > _UNSHIFTED_SHARPNESS:  # a constant of the exported graph
        return mean_f, _smooth_max_frames(frames[video_index] @ snippets.transpose(2, 3),
                                          video_mask, sharp)
    scaled = snippets @ (frames * sharp).transpose(2, 3)[video_index]  # [P,H,S,F]
    with full_precision(scaled):  # e^20 and sums of them pass float16's range (autocast)
        # (a graph step only where it casts: a traced .float() is one even on float32)
        powers = (scaled if scaled.dtype == torch.float32 else scaled.float()).exp()
        summed = powers @ video_mask.to(powers.dtype)[:, None, :, None]  # [P,H,S,1]
    return mean_f, summed.squeeze(3).log() / sharp


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
        self.step = SNIPPET_HOP_SECONDS / cfg.windows_per_snippet
        self.video = nn.Linear(d, d)  # frame and snippet projections of the similarity map
        self.music = nn.Linear(d, d)
        self.whole = nn.Linear(d, d)  # h(v) in the snippets' projection
        self.content = nn.Linear(d, CONTENT_CHANNELS)
        self.log_sharpness = nn.Parameter(torch.tensor(2.3))  # smooth-max sharpness ~10
        n_snippet = 3 * h + CONTENT_CHANNELS
        self.snippet_head = nn.Linear(n_snippet, 1)
        # per snippet channels + its evidence logit, as a bag and at the window's onset
        n_read = n_snippet + 1
        self.inp = nn.Linear(h + 3 * n_read + N_POSITION_FEATURES, hidden)
        self.prior = nn.Embedding(cfg.max_snippets * cfg.windows_per_snippet, hidden)
        nn.init.zeros_(self.prior.weight)
        # depthwise convolutions (width 5) along the candidates, then a pointwise mix:
        # separable, a fifth of a dense convolution's cost; written as shifted products,
        # whose backward is far cheaper on a CPU than a grouped convolution's
        self.context = nn.ParameterList(
            nn.Parameter(torch.randn(CONTEXT_WIDTH, hidden) / CONTEXT_WIDTH) for _ in range(2))
        self.context_mix = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(2))
        self.context_norm = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(2))
        self.out = nn.Linear(hidden, 2)  # logit, start offset
        self.bias = nn.Parameter(torch.zeros(()))

    def track_keys(self, music_tokens: Tensor) -> Tensor:
        """What the head reads of U tracks, [U, S, D] tokens -> [U, S, D + CONTENT_CHANNELS]:
        each snippet's projection (made unit per head where it is read) and its content
        channels. A function of the track alone, so an exported catalogue stores it in
        place of the tokens and the pairs never recompute it (0.9 of a 10-pair call's 4.6
        ms); both halves are linear maps of the tokens, of like magnitudes, which a
        compact catalogue's per-row int8 scale needs."""
        return torch.cat([self.music(music_tokens), self.content(music_tokens)], dim=-1)

    def _pair_evidence(self, video_tokens: Tensor, video_mask: Tensor, video_emb: Tensor,
                       music_keys: Tensor, music_mask: Tensor, music_index: Tensor,
                       video_index: Tensor, video_seconds: Tensor) -> _Evidence:
        """Per pair: the frame-to-snippet similarity, the per-snippet features (evidence
        logit included), the pairs' masks and moment lengths (:class:`_Evidence`).
        Projections run once per video (the tracks' are ``music_keys``)."""
        b, f, _ = video_tokens.shape
        u, s, width = music_keys.shape
        h, d = self.n_heads, width - CONTENT_CHANNELS
        # -- per video and per track -----------------------------------------------------
        v = unit(self.video(video_tokens).float().view(b, f, h, -1), dim=-1)  # [B,F,H,Dh]
        # padded frames zeroed per video, so their similarities are 0 in every pair without
        # a [P,H,F,S] select (onnxruntime's Where over it cost more than the matmul)
        v = v.masked_fill(~video_mask[:, :, None, None], 0.0)
        m = unit(music_keys[..., :d].float().view(u, s, h, -1), dim=-1)  # [U,S,H,Dh]
        whole = unit(self.whole(video_emb).float().view(b, h, -1), dim=-1)  # [B,H,Dh]
        content = music_keys[..., d:].float().transpose(1, 2)  # [U,S,G] -> [U,G,S]
        frames = v.transpose(1, 2)  # [B,H,F,Dh]
        # -- per pair ----------------------------------------------------------------------
        whole = whole[video_index]  # [P,H,Dh]
        m, content = m[music_index], content[music_index]  # [P,S,H,Dh], [P,G,S]
        video_mask, music_mask = video_mask[video_index], music_mask[music_index]
        seconds = video_seconds[video_index].float()  # [P]
        # batched matmuls, not einsums: onnxruntime's Einsum ran these ~4x slower
        heads_m = m.permute(0, 2, 1, 3)  # [P,H,S,Dh]
        sharp = self.log_sharpness.exp()
        sim: Tensor | None = None
        if torch.is_grad_enabled() and (frames.requires_grad or heads_m.requires_grad):
            sim = frames[video_index] @ heads_m.transpose(2, 3)  # [P,H,F,S], 0 on padded frames
            mean_f = sim.sum(dim=2) / video_mask.sum(dim=1).float()[:, None, None]  # [P,H,S]
            smax_f = _smooth_max_frames(sim, video_mask, sharp)
        else:
            mean_f, smax_f = _frame_reads(frames, heads_m, video_index, video_mask, sharp)
        to_whole = (heads_m @ whole[..., None]).squeeze(-1)  # [P,H,S]
        per_snippet = torch.cat([mean_f, smax_f, to_whole, content], dim=1)  # [P,C,S]
        snippet_logits = self.snippet_head(per_snippet.transpose(1, 2)).squeeze(-1)  # [P,S]
        # the evidence logit, which the dense inside-the-moment loss trains from the first
        # step, read by the window scorer too: a head start on a track-level prior
        per_snippet = torch.cat([per_snippet, snippet_logits[:, None]], dim=1)  # [P,C,S]
        return _Evidence(sim, frames, heads_m, per_snippet, snippet_logits, video_mask,
                         music_mask, seconds)

    def forward(self, video_tokens: Tensor, video_mask: Tensor, video_emb: Tensor,
                music_keys: Tensor, music_mask: Tensor, music_index: Tensor,
                video_index: Tensor, video_seconds: Tensor) -> WindowScores:
        """Score P (video, track) pairs: video video_index[p] on track music_index[p].

        video_tokens [B, F, D], video_mask [B, F], video_emb [B, D], music_keys [U, S, D + 4]
        (:meth:`track_keys` of the tracks' tokens), music_mask [U, S], music_index /
        video_index [P] long, video_seconds [B] (the moments' lengths) ->
        :class:`WindowScores` of P rows. The projections are computed once per video,
        however many pairs share it.
        """
        evidence = self._pair_evidence(video_tokens, video_mask, video_emb, music_keys,
                                       music_mask, music_index, video_index, video_seconds)
        per_snippet, snippet_logits = evidence.per_snippet, evidence.logits
        video_mask, music_mask, seconds = evidence.video_mask, evidence.music_mask, evidence.seconds
        b = video_index.shape[0]  # one row per pair
        n_frames = video_mask.sum(dim=1).float()  # [P], >= 1

        # -- candidate windows -----------------------------------------------------------
        snippet_index = _positions(music_mask[0])  # [S]
        sub = torch.arange(self.per_snippet, dtype=torch.float32, device=music_mask.device)
        grid = (snippet_index[:, None] * self.per_snippet + sub[None, :]).reshape(-1)  # [K]
        anchors = grid * self.step  # [K] seconds
        n_snippets = music_mask.sum(dim=1).float()  # [B]
        track = ((n_snippets - 1.0) * SNIPPET_HOP_SECONDS).clamp(max=MAX_MUSIC_SECONDS)  # [B]
        room = (track - seconds).clamp(min=0.0)  # [P], the latest start inside the track
        valid = anchors[None, :] <= room[:, None] + 1e-4  # [B,K]; anchor 0 always valid

        # alignment: frame j plays over snippet position (anchor + j) / 2.5, the similarity
        # linearly interpolated between snippets, summed over the frames
        if evidence.sim is not None:  # training's form, through the map
            pos = (anchors[:, None] + _positions(video_mask[0])[None, :]) / SNIPPET_HOP_SECONDS
            aligned = _along_windows(evidence.sim, pos, snippet_index)  # [P,H,K]
        else:
            aligned = _along_windows_factored(evidence.frames, evidence.snippets, video_index,
                                              self.per_snippet, snippet_index)
        aligned = aligned / n_frames[:, None, None]

        # bag: mean of the per-snippet features over the snippets whose centre is inside
        csum = F.pad(per_snippet.cumsum(dim=2), (1, 0))  # [B,C,S+1]
        end_snip = torch.floor((anchors[None, :] + seconds[:, None]) / SNIPPET_HOP_SECONDS + 1e-6)
        end_snip = torch.minimum(end_snip, n_snippets[:, None] - 1.0)  # [B,K]
        first = torch.ceil(anchors / SNIPPET_HOP_SECONDS - 1e-6)[None, :]  # [1,K]
        first = torch.minimum(first.expand_as(end_snip), end_snip)  # >= 1 snippet per window
        count = (end_snip - first + 1.0)[:, None]  # [B,1,K]
        c = per_snippet.shape[1]
        bag = (csum.gather(2, (end_snip + 1.0).long()[:, None].expand(-1, c, -1))
               - csum.gather(2, first.long()[:, None].expand(-1, c, -1))) / count  # [B,C,K]

        # onset: the snippet the window starts on and the one before it (interpolated), so
        # a section's first snippet (a hook, a drop) is told from the ones inside it
        at = anchors[None, :] / SNIPPET_HOP_SECONDS - torch.stack([anchors.new_zeros(()),
                                                           anchors.new_ones(())])[:, None]
        onset_hat = (1.0 - (at[:, :, None] - snippet_index[None, None, :]).abs()).clamp(min=0.0)
        # one batched matmul ([2K,S] @ [P,S,C]), not an einsum: onnxruntime's Einsum ran it
        # about 3x slower; channels in the order (onset snippet t, channel c)
        onset = (onset_hat.flatten(0, 1) @ per_snippet.transpose(1, 2)  # [P,2K,C]
                 ).unflatten(1, (2, -1)).transpose(1, 2).flatten(2, 3)  # [P,K,2C]

        # where the window sits
        a = anchors[None, :].expand(b, -1)  # [B,K]
        where = torch.stack([
            a / MAX_MUSIC_SECONDS,
            a / track.clamp(min=SNIPPET_HOP_SECONDS)[:, None],
            (a == 0).float(),
            (room[:, None] - a) / MAX_MUSIC_SECONDS,
            (seconds / MAX_MUSIC_SECONDS)[:, None].expand_as(a),
            (track / MAX_MUSIC_SECONDS)[:, None].expand_as(a),
        ], dim=-1)  # [B,K,6]

        # -- per-candidate network -------------------------------------------------------
        feats = torch.cat([aligned.transpose(1, 2), bag.transpose(1, 2), onset, where], dim=-1)
        keep = valid[..., None].float()  # [B,K,1]
        x = (self.inp(feats.to(self.inp.weight.dtype)) + self.prior(grid.long())) * keep
        for weight, mix, norm in zip(self.context, self.context_mix, self.context_norm):
            # padding candidates read as zeros, whatever the batch's padding
            y = _depthwise(F.silu(norm(x)) * keep, weight)  # [P,K,H']
            x = x + mix(F.silu(y)) * keep
        out = self.out(F.silu(x)).float()  # [P,K,2]
        logits = (out[..., 0] + self.bias).masked_fill(~valid, float("-inf"))
        offset = torch.tanh(out[..., 1]) * self.step
        starts = torch.minimum((a + offset).clamp(min=0.0), room[:, None])  # [B,K]
        ends = (starts + seconds[:, None]).clamp(max=MAX_MUSIC_SECONDS)
        snippet_logits = snippet_logits.float().masked_fill(~music_mask, float("-inf"))
        return WindowScores(a, starts, ends, logits, snippet_logits)
