"""Tests of the window moment head (mgsv_sk.nn.window), its losses and the torch-free window
selection (mgsv_sk.grounding.moments): tiny configs, seeded, a few seconds in all."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _configs import loss_weights, made_config
from hypothesis import given, settings
from hypothesis import strategies as st

from mgsv_sk.data import spans as np_spans
from mgsv_sk.grounding.moments import select_windows, sigmoid
from mgsv_sk.nn import MaDe, made_losses
from mgsv_sk.nn.losses import window_iou, window_terms
from mgsv_sk.nn.window import WindowHead

TINY = dict(video_dim=12, music_dim=16, d_model=32, n_heads=2, ffn_mult=2, max_frames=12,
            max_snippets=16, window_hidden=16)


def tiny_model(seed: int = 0, **overrides: object) -> MaDe:
    torch.manual_seed(seed)
    return MaDe(made_config(**{**TINY, **overrides}))


def make_batch(seed: int = 0, b: int = 6, u: int = 3, f: int = 9, s: int = 13) -> dict:
    g = torch.Generator().manual_seed(seed)
    f_len = torch.randint(1, f + 1, (b,), generator=g)
    s_len = torch.randint(1, s + 1, (u,), generator=g)
    return {
        "video": torch.randn(b, f, TINY["video_dim"], generator=g),
        "video_mask": torch.arange(f)[None] < f_len[:, None],
        "music": torch.randn(u, s, TINY["music_dim"], generator=g),
        "music_mask": torch.arange(s)[None] < s_len[:, None],
        "music_index": torch.cat([torch.arange(u), torch.randint(0, u, (b - u,), generator=g)]),
        "video_seconds": f_len.float() - 0.3,
    }


def ground(model: MaDe, batch: dict):
    return model.ground(model.encode_video(batch["video"], batch["video_mask"]),
                        model.encode_music(batch["music"], batch["music_mask"]),
                        batch["music_index"], batch["video_seconds"])


# -- shapes, masks, geometry -----------------------------------------------------------------
def test_candidates_cover_the_grid_and_stay_inside_the_track():
    model = tiny_model().eval()
    batch = make_batch(s=13)
    with torch.no_grad():
        g = ground(model, batch)
    b, s = 6, 13
    k = made_config().windows_per_snippet * s
    assert g.anchors.shape == g.starts.shape == g.ends.shape == g.logits.shape == (b, k)
    assert g.spans.shape[0] == 0 and g.snippet_logits.shape == (b, s)
    np.testing.assert_allclose(g.anchors[0].numpy(), np.arange(k) * 1.25)
    n_snip = batch["music_mask"].sum(1)[batch["music_index"]].float()
    track = (n_snip - 1) * 2.5
    seconds = batch["video_seconds"]
    room = (track - seconds).clamp(min=0)
    valid = torch.isfinite(g.logits)
    assert valid[:, 0].all()  # a start at 0 always exists
    # a candidate is a window exactly when it starts no later than the room the track leaves
    assert torch.equal(valid, g.anchors <= room[:, None] + 1e-4)
    assert (g.starts >= 0).all() and (g.starts <= room[:, None] + 1e-5).all()
    assert (g.ends <= 240).all()
    fits = seconds <= track
    # the window has the video's length and never passes the track's end
    torch.testing.assert_close((g.ends - g.starts)[fits], seconds[fits, None].expand(-1, k))
    assert (g.ends[fits] <= track[fits, None] + 1e-4).all()
    # a video longer than its track gets the single window [0, its length]
    assert (~fits).any()
    assert valid[~fits].sum(1).eq(1).all() and (g.starts[~fits][:, 0] == 0).all()
    # padded snippets have no evidence and padded candidates are never chosen
    assert torch.isinf(g.snippet_logits[~batch["music_mask"][batch["music_index"]]]).all()
    best = g.logits.argmax(1)
    assert valid[torch.arange(b), best].all()


def test_padding_never_changes_a_window():
    model = tiny_model().eval()
    batch = make_batch()
    with torch.no_grad():
        ref = ground(model, batch)
        padded = dict(batch)
        g = torch.Generator().manual_seed(5)
        padded["video"] = torch.cat([batch["video"], 9 * torch.randn(6, 3, 12, generator=g)], 1)
        padded["video_mask"] = torch.cat([batch["video_mask"], torch.zeros(6, 3, dtype=bool)], 1)
        padded["music"] = torch.cat([batch["music"], 9 * torch.randn(3, 3, 16, generator=g)], 1)
        padded["music_mask"] = torch.cat([batch["music_mask"], torch.zeros(3, 3, dtype=bool)], 1)
        out = ground(model, padded)
    k = ref.logits.shape[1]
    assert torch.isinf(out.logits[:, k:]).all()  # the extra candidates are padding
    for name in ("starts", "ends", "logits"):
        torch.testing.assert_close(getattr(out, name)[:, :k], getattr(ref, name),
                                   atol=1e-5, rtol=0)


def test_aligned_evidence_is_the_diagonal_of_the_similarity_map():
    # A head whose only input is the alignment feature of head 0: logits are then an affine
    # function of the mean over frames of sim[f, (start + f) / 2.5] (interpolated), which
    # is computed here by a loop.
    torch.manual_seed(3)
    cfg = made_config(**{**TINY, "n_heads": 1})
    head = WindowHead(cfg).eval()
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        head.video.weight.copy_(torch.eye(32))
        head.music.weight.copy_(torch.eye(32))
        head.inp.weight[0, 0] = 1.0  # aligned feature -> hidden unit 0
        head.out.weight[0, 0] = 1.0  # silu(hidden 0) -> logit
        vt, mt = torch.randn(1, 5, 32), torch.randn(1, 16, 32)
        zero = torch.zeros(1, dtype=torch.long)
        out = head(vt, torch.ones(1, 5, dtype=bool), torch.randn(1, 32), head.track_keys(mt),
                   torch.ones(1, 16, dtype=bool), zero, zero, torch.tensor([4.6]))
    v = torch.nn.functional.normalize(vt[0], dim=-1)
    m = torch.nn.functional.normalize(mt[0], dim=-1)
    sim = v @ m.T  # [F,S]
    for c in (0, 3, 7, 20):
        start = c * 1.25
        vals = []
        for f in range(5):
            p = (start + f) / 2.5
            lo = int(np.floor(p))
            w = p - lo
            vals.append(sim[f, lo] * (1 - w) + sim[f, min(lo + 1, 15)] * w)
        aligned = torch.stack(vals).mean()
        torch.testing.assert_close(out.logits[0, c], torch.nn.functional.silu(aligned),
                                   atol=1e-5, rtol=0)


@settings(max_examples=40, deadline=None)
@given(s=st.integers(1, 20), f=st.integers(1, 30), per_snippet=st.integers(1, 3),
       videos=st.integers(1, 3), pairs=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_alignment_factored_through_the_videos_equals_the_hat_matmul(s, f, per_snippet,
                                                                     videos, pairs, seed):
    # Inference sums each video's frames into a few rows per candidate phase and reads the
    # pairs' products with them along their diagonals; training multiplies the similarity
    # map by the hat kernel (whose backward is a matmul). Same sums, padded frames and
    # positions past the track's end included; and the training form's gradient flows.
    from mgsv_sk.nn.window import _along_windows, _along_windows_factored

    g = torch.Generator().manual_seed(seed)
    frames = torch.nn.functional.normalize(torch.randn(videos, 3, f, 4, generator=g), dim=-1)
    frames[:, :, f // 2 + 1:] = 0.0  # padded frames
    snippets = torch.nn.functional.normalize(torch.randn(pairs, 3, s, 4, generator=g), dim=-1)
    video_index = torch.randint(0, videos, (pairs,), generator=g)
    sim = (frames[video_index] @ snippets.transpose(2, 3)).requires_grad_()
    anchors = torch.arange(per_snippet * s, dtype=torch.float32) * 2.5 / per_snippet
    pos = (anchors[:, None] + torch.arange(f, dtype=torch.float32)[None, :]) / 2.5
    index = torch.arange(s, dtype=torch.float32)
    trained = _along_windows(sim, pos, index)
    factored = _along_windows_factored(frames, snippets, video_index, per_snippet, index)
    torch.testing.assert_close(factored, trained.detach(), atol=2e-5, rtol=1e-5)
    trained.sum().backward()
    assert sim.grad is not None and torch.isfinite(sim.grad).all()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), log_sharpness=st.sampled_from([0.0, 2.3, 3.0, 5.5]),
       longer=st.booleans())
def test_inference_reads_equal_the_training_form(seed, log_sharpness, longer):
    # Without a gradient the head reads the frames' mean through their sum and the smooth
    # maximum without a max shift (sharpness within 40) or with it (past: e^5.5 = 245,
    # where e^sharpness passes float32), and the context layers by one grouped convolution;
    # where e^sharpness passes float32);
    # with one, it builds the similarity map. The same windows and scores either way.
    model = tiny_model(seed).eval()
    with torch.no_grad():
        model.detector.log_sharpness.fill_(log_sharpness)
    batch = make_batch(seed, b=7, u=3, f=10, s=14)
    if longer:  # some videos longer than their track: windows read past its end
        batch["video_seconds"] = batch["video_seconds"] * 3
    with torch.no_grad():
        read = ground(model, batch)
    trained = ground(model, batch)  # parameters require grad: the training form
    assert trained.logits.requires_grad
    for name in ("starts", "ends", "logits", "snippet_logits"):
        got, want = getattr(read, name), getattr(trained, name).detach()
        assert torch.equal(torch.isfinite(got), torch.isfinite(want))
        ok = torch.isfinite(want)
        torch.testing.assert_close(got[ok], want[ok], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_inference_reads_hold_under_mixed_precision(dtype):
    # e^(sharpness x cosine) and its sums over frames pass float16's range (65504) at a
    # sharpness of 20: the reads without a gradient keep them in float32 under autocast,
    # as the training form's shifted sum does
    model = tiny_model(0).eval()
    with torch.no_grad():
        model.detector.log_sharpness.fill_(3.0)
    batch = make_batch(0, b=6, u=3, f=12, s=13)
    with torch.autocast("cpu", dtype=dtype):
        with torch.no_grad():
            read = ground(model, batch)
        trained = ground(model, batch)
    ok = torch.isfinite(trained.logits)
    assert torch.equal(torch.isfinite(read.logits), ok)
    torch.testing.assert_close(read.logits[ok].float(), trained.logits.detach()[ok].float(),
                               atol=2e-2, rtol=0)


def test_window_keys_stand_for_the_tokens_and_padding_reads_as_past_the_end():
    # ground() on keys computed once per track (what a bundle's catalogue stores) equals
    # ground() on the tokens; a video longer than its track reads nothing past the track's
    # end, whether the batch pads that track (a longer track beside it) or not.
    model = tiny_model(4).eval()
    batch = make_batch(4, b=6, u=3, f=12, s=13)
    batch["video_seconds"] = batch["video_seconds"] * 3
    with torch.no_grad():
        video = model.encode_video(batch["video"], batch["video_mask"])
        music = model.encode_music(batch["music"], batch["music_mask"])
        keys = model.window_keys(music)
        assert keys.shape == (*music.mask.shape, 32 + 4)
        assert (keys[~music.mask] == 0).all()
        whole = model.ground(video, music, batch["music_index"], batch["video_seconds"])
        keyed = model.ground(video, music, batch["music_index"], batch["video_seconds"],
                             music_keys=keys)
        for name in ("starts", "ends", "logits"):
            torch.testing.assert_close(getattr(keyed, name), getattr(whole, name))
        # each pair alone, its track unpadded
        for p in range(6):
            u = int(batch["music_index"][p])
            n = int(music.mask[u].sum())
            alone = model.ground(
                type(video)(*(t[p: p + 1] for t in video)),
                type(music)(music.tokens[u: u + 1, :n], music.mask[u: u + 1, :n],
                            music.emb[u: u + 1]),
                torch.zeros(1, dtype=torch.long), batch["video_seconds"][p: p + 1])
            k = alone.logits.shape[1]
            torch.testing.assert_close(alone.logits[0], whole.logits[p, :k], atol=1e-5, rtol=0)
            torch.testing.assert_close(alone.starts[0], whole.starts[p, :k], atol=1e-5, rtol=0)
        with pytest.raises(ValueError, match="music_keys must have shape"):
            model.ground(video, music, batch["music_index"], music_keys=keys[:, :, :-1])


# -- losses ------------------------------------------------------------------------------------
def test_window_iou_matches_the_protocol_geometry():
    anchors = torch.tensor([[0.0, 5.0, 20.0, 235.0]])
    target = torch.tensor([[10.0, 26.0]])  # start, end
    cw = torch.tensor([[(10 + 26) / 2 / 240, 16 / 240]])
    got = window_iou(anchors, torch.tensor([16.0]), cw)
    pred = np.stack([anchors[0].numpy(), np.minimum(anchors[0].numpy() + 16, 240)], 1)
    want = np_spans.temporal_iou(pred, np.repeat(target.numpy(), 4, 0), np.full(4, 240.0))
    np.testing.assert_allclose(got[0].numpy(), want, atol=1e-6)


def test_window_terms_prefer_the_true_window_and_learn_from_negatives():
    model = tiny_model()
    batch = make_batch()
    out = model(batch["video"], batch["video_mask"], batch["music"], batch["music_mask"],
                batch["music_index"], batch["video_seconds"])
    assert out.negative_logits.shape == out.grounding.logits.shape
    g = out.grounding
    seconds = batch["video_seconds"]
    start = torch.zeros(6)
    cw = torch.stack([(start + seconds / 2) / 240, seconds / 240], 1)
    window, boundary, match = window_terms(g, out.negative_logits, seconds, cw)
    assert match is not None and window > 0 and boundary >= 0
    # logits that put all mass on the true window (anchor 0) give a lower cross-entropy
    sharp = g._replace(logits=torch.where(torch.isfinite(g.logits),
                                          torch.where(g.anchors == 0, 20.0, -20.0), g.logits))
    assert window_terms(sharp, out.negative_logits, seconds, cw)[0] < window
    # without negatives (one track in the batch) there is no match term
    assert window_terms(g, g.logits[:0], seconds, cw)[2] is None
    terms = made_losses(out, batch["music_index"], cw, loss_weights(), video_seconds=seconds)
    assert terms.l1 is None and terms.window is not None and terms.match is not None
    terms.total.backward()
    assert model.detector.bias.grad is not None and model.detector.bias.grad != 0


# -- selection ---------------------------------------------------------------------------------
def naive_select(starts, ends, logits, m):
    """One row, by a plain loop: best remaining candidate, drop its overlaps, repeat."""
    cand = [i for i in range(len(logits)) if np.isfinite(logits[i])]
    out = []
    while cand and len(out) < m:
        best = max(cand, key=lambda i: (logits[i], -i))
        out.append((starts[best], ends[best], sigmoid(logits[best])))
        cand = [i for i in cand if i != best
                and not (starts[i] < ends[best] and ends[i] > starts[best])]
    return out


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 5), st.integers(1, 30))
def test_select_windows_equals_a_naive_loop(seed, m, k):
    rng = np.random.default_rng(seed)
    starts = np.sort(rng.uniform(0, 100, (3, k)), axis=1)
    ends = starts + rng.uniform(0, 30, (3, 1))
    logits = rng.integers(-3, 4, (3, k)).astype(float)  # ties on purpose
    logits[rng.random((3, k)) < 0.3] = -np.inf
    start, end, score = select_windows(starts, ends, logits, m)
    for r in range(3):
        want = naive_select(starts[r], ends[r], logits[r], m)
        got = [(a, b, c) for a, b, c in zip(start[r], end[r], score[r]) if np.isfinite(a)]
        np.testing.assert_allclose(np.array(got).reshape(-1, 3), np.array(want).reshape(-1, 3))
        assert np.isnan(start[r, len(want):]).all()
        # best first, and pairwise non-overlapping
        assert (np.diff(score[r, : len(want)]) <= 0).all()
        for i in range(len(got)):
            for j in range(i):
                assert got[i][0] >= got[j][1] or got[i][1] <= got[j][0]


def test_sigmoid_is_stable():
    x = np.array([-1e4, -30.0, 0.0, 30.0, 1e4])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = sigmoid(x)
    np.testing.assert_allclose(y, [0, 1 / (1 + np.exp(30)), 0.5, 1 / (1 + np.exp(-30)), 1])


# -- the estimator -------------------------------------------------------------------------------
def test_moments_per_track_predict_and_rank(tiny_fitted, small_test):
    X = small_test.frame.iloc[:8]
    one = tiny_fitted.predict(X, features=small_test.features)
    three = tiny_fitted.predict(X, features=small_test.features, moments_per_track=3)
    assert "windows" not in one.columns and list(three.index) == list(X.index)
    # the first window is the single-moment prediction, later ones score no higher and
    # never overlap an earlier one
    np.testing.assert_allclose(three[["start", "end", "moment_score"]],
                               one[["start", "end", "moment_score"]])
    for row, windows in zip(three.itertuples(), three["windows"]):
        assert 1 <= len(windows) <= 3
        assert windows[0] == [row.start, row.end, row.moment_score]
        scores = [w[2] for w in windows]
        assert scores == sorted(scores, reverse=True)
        for i in range(len(windows)):
            for j in range(i):
                assert windows[i][0] >= windows[j][1] or windows[i][1] <= windows[j][0]
    ranked = tiny_fitted.rank(X.drop(columns="music_id"), k=4, features=small_test.features,
                              moments_per_track=2)
    assert len(ranked) == 32 and all(1 <= len(w) <= 2 for w in ranked["windows"])
    with pytest.raises(ValueError, match="moments_per_track must be a positive integer"):
        tiny_fitted.predict(X, features=small_test.features, moments_per_track=0)
    with pytest.raises(ValueError, match="moments_per_track"):
        tiny_fitted.rank(X, features=small_test.features, moments_per_track=True)


def test_moment_score_is_not_constant(tiny_fitted, small_test):
    pred = tiny_fitted.predict(small_test.frame, features=small_test.features)
    assert pred["moment_score"].between(0, 1).all() and pred["moment_score"].std() > 1e-3
