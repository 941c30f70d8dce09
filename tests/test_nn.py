"""Tests of the torch MaDe model (mgsv_sk.nn) with the paper's DETR detector: tiny configs,
seeded, a few seconds in all. The window head has its own tests (test_window.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _configs import loss_weights, made_config
from torch import nn

from mgsv_sk.data import spans as np_spans
from mgsv_sk.grounding.moments import select_windows
from mgsv_sk.nn import (
    MaDe,
    MaDeConfig,
    count_parameters,
    info_nce,
    made_losses,
    span_ops,
)
from mgsv_sk.nn.detector import SingleQueryCrossAttention, SingleQueryDecoderLayer
from mgsv_sk.nn.layers import SelfAttention, fast_dropout, unit

TINY = dict(
    detector="detr",
    video_dim=12,
    music_dim=16,
    d_model=32,
    n_heads=2,
    ffn_mult=2,
    encoder_layers=1,
    decoder_layers=2,
    max_frames=12,
    max_snippets=16,
)


def tiny_model(seed: int = 0, **overrides: object) -> MaDe:
    torch.manual_seed(seed)
    return MaDe(made_config(**{**TINY, **overrides}))


def make_batch(seed: int = 0, b: int = 5, u: int = 3, f: int = 9, s: int = 13) -> dict:
    """Random batch; valid positions first, padded features are garbage (must not matter)."""
    g = torch.Generator().manual_seed(seed)
    f_len = torch.randint(1, f + 1, (b,), generator=g)
    s_len = torch.randint(1, s + 1, (u,), generator=g)
    music_index = torch.cat([torch.arange(u), torch.randint(0, u, (b - u,), generator=g)])
    return {
        "video": torch.randn(b, f, TINY["video_dim"], generator=g),
        "video_mask": torch.arange(f)[None] < f_len[:, None],
        "music": torch.randn(u, s, TINY["music_dim"], generator=g),
        "music_mask": torch.arange(s)[None] < s_len[:, None],
        "music_index": music_index,
        "target_cw": torch.rand(b, 2, generator=g) * 0.4 + 0.05,
    }


def run(model: MaDe, batch: dict):
    return model(batch["video"], batch["video_mask"], batch["music"], batch["music_mask"],
                 batch["music_index"])


# -- config ---------------------------------------------------------------------------------
def test_unit_is_f_normalize_in_value_and_gradient():
    """The exported models normalise with layers.unit (no materialised expand): it must be
    F.normalize exactly, zero vectors and gradients included."""
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    x[0, 1] = 0.0  # a zero vector: both give 0, and a finite gradient
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    weights = torch.randn_like(x)
    (unit(a, dim=-1) * weights).sum().backward()
    (torch.nn.functional.normalize(b, dim=-1) * weights).sum().backward()
    assert torch.equal(unit(x, dim=-1), torch.nn.functional.normalize(x, dim=-1))
    assert torch.allclose(a.grad, b.grad, rtol=0, atol=1e-15)
    assert torch.isfinite(a.grad).all()
    assert torch.equal(unit(x, dim=1), torch.nn.functional.normalize(x, dim=1))


def test_config_defaults_and_validation():
    cfg = made_config()  # the estimator's defaults: the config declares none for them
    assert (cfg.d_model, cfg.n_heads, cfg.decoder_layers, cfg.temperature_init) == (
        256, 8, 6, 0.03)
    with pytest.raises(TypeError, match="missing"):
        MaDeConfig(video_dim=512)  # no second copy of the estimator's defaults
    assert made_config(retrieval_scores=["xpool"]).retrieval_scores == ("xpool",)
    with pytest.raises(ValueError, match="divisible by n_heads") as err:
        made_config(d_model=30, n_heads=4, retrieval_scores=("dual", "bogus"))
    assert "retrieval_scores" in str(err.value)  # all problems in one message
    with pytest.raises(ValueError, match="temporal_dropout"):
        made_config(temporal_dropout=1.0)


def test_default_parameter_count():
    # 10.5 M in the paper; the single-query decoder has no self-attention q/k projections
    # (6 layers x 2 x 65,792 parameters that a single query never uses); the video-length
    # query code (256 x 256 + 256), the snippet evidence head (256 + 1) and the cross-modal
    # evidence (2 x 65,792 + 16 x 256 + 256 + 1) are additions.
    additions = 65_792 + 257 + 2 * 65_792 + 4_352 + 1
    n = count_parameters(MaDe(made_config(detector="detr")))
    assert n == 9_548_549 + additions
    assert abs(n - additions + 6 * 2 * 65_792 - 10.5e6) < 0.25e6


# -- shapes and invariances -------------------------------------------------------------------
def test_forward_shapes_and_ranges():
    model = tiny_model().eval()
    batch = make_batch()
    out = run(model, batch)
    b, u, n_layers = 5, 3, TINY["decoder_layers"]
    assert out.dual.shape == out.xpool.shape == (b, u)
    assert out.spans.shape == out.fg_logits.shape == (n_layers, b, 2)
    assert ((out.spans > 0) & (out.spans < 1)).all()
    assert out.dual.abs().max() <= 1 + 1e-5 and out.xpool.abs().max() <= 1 + 1e-5
    assert math.isclose(float(out.logit_scale.detach()), 1 / 0.03, rel_tol=1e-5)
    grounding = model.ground(
        model.encode_video(batch["video"], batch["video_mask"]),
        model.encode_music(batch["music"], batch["music_mask"]),
        batch["music_index"],
    )
    start, end, conf = (torch.from_numpy(a[:, 0]).float() for a in select_windows(
        *(t.detach().numpy() for t in (grounding.starts, grounding.ends, grounding.logits))))
    assert grounding.logits.shape == (b, 1) and start.shape == end.shape == conf.shape == (b,)
    assert ((conf > 0) & (conf < 1)).all() and (0 <= start).all() and (start <= end).all()
    center, width = grounding.spans[-1].unbind(-1)
    torch.testing.assert_close(start, ((center - width / 2) * 240).clamp(0, 240))


def test_single_frame_and_snippet():
    model = tiny_model().eval()
    out = run(model, make_batch(b=3, u=3, f=1, s=1))
    assert torch.isfinite(out.spans).all() and torch.isfinite(out.xpool).all()


def _pad(x: torch.Tensor, mask: torch.Tensor, extra: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    junk = torch.randn(x.shape[0], extra, x.shape[2], generator=g) * 10
    return torch.cat([x, junk], 1), torch.cat([mask, torch.zeros(x.shape[0], extra, dtype=bool)], 1)


def test_padding_invariance():
    model = tiny_model().eval()
    batch = make_batch()
    ref = run(model, batch)
    padded = dict(batch)
    padded["video"], padded["video_mask"] = _pad(batch["video"], batch["video_mask"], 3, 1)
    padded["music"], padded["music_mask"] = _pad(batch["music"], batch["music_mask"], 3, 2)
    out = run(model, padded)
    for name in ("dual", "xpool", "spans", "fg_logits"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), atol=1e-5, rtol=0)
    enc = model.encode_music(padded["music"], padded["music_mask"])
    assert (enc.tokens[~padded["music_mask"]] == 0).all()


def test_xpool_chunked_equals_unchunked_and_paired():
    model = tiny_model().eval()
    batch = make_batch(b=6, u=5)
    v = model.encode_video(batch["video"], batch["video_mask"])
    m = model.encode_music(batch["music"], batch["music_mask"])
    assert model.xpool is not None
    with torch.no_grad():
        full = model.xpool.pairwise(v.emb, m.tokens, m.mask, chunk=1000)
        for chunk in (1, 2, 3):
            torch.testing.assert_close(model.xpool.pairwise(v.emb, m.tokens, m.mask, chunk), full)
        idx = batch["music_index"]
        paired = model.xpool.paired(v.emb, m.tokens[idx], m.mask[idx])
    torch.testing.assert_close(paired, full[torch.arange(6), idx], atol=1e-5, rtol=0)


def test_xpool_equals_textbook_attention_with_random_weights():
    """The cached-state rewrite (query moved through W_k, W_o W_v after pooling) is exact."""
    model = tiny_model().eval()
    xp = model.xpool
    assert xp is not None
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in xp.parameters():  # identity-initialised: randomise to test the algebra
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3 + (1.0 if p.ndim == 1 else 0.0))
    batch = make_batch(b=4, u=3)
    v = model.encode_video(batch["video"], batch["video_mask"])
    m = model.encode_music(batch["music"], batch["music_mask"])
    with torch.no_grad():
        q = xp.q(xp.norm_in(v.emb)) * xp.scale  # [B,D]
        n = xp.norm_in(m.tokens)  # [U,S,D]
        logits = torch.einsum("usd,bd->bus", xp.k(n), q)
        attn = logits.masked_fill(~m.mask[None], float("-inf")).softmax(-1)
        pooled = xp.out(torch.einsum("bus,usd->bud", attn, xp.v(n)))
        x = xp.norm_attn(pooled)
        h1 = xp.norm_out(x + xp.proj(x))
        expected = torch.nn.functional.cosine_similarity(h1, v.emb[:, None], dim=-1)
        torch.testing.assert_close(xp.pairwise(v.emb, m.tokens, m.mask, chunk=2), expected,
                                   atol=1e-5, rtol=1e-4)


def test_disabled_score_is_empty_and_has_no_parameters():
    model = tiny_model(retrieval_scores=("dual",)).eval()
    assert model.xpool is None
    batch = make_batch()
    out = run(model, batch)
    assert out.xpool.shape == (5, 0) and out.dual.shape == (5, 3)
    terms = made_losses(out, batch["music_index"], batch["target_cw"], loss_weights())
    assert terms.xpool is None and "xpool" not in terms.as_floats()


# -- exactness of the single-query rewrites ----------------------------------------------------
def test_cross_attention_matches_multihead_attention():
    torch.manual_seed(0)
    d, h, b, t = 16, 4, 3, 7
    ours = SingleQueryCrossAttention(d, h, attn_dropout=0.0).eval()
    ref = nn.MultiheadAttention(d, h, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.q.weight, ours.k.weight, ours.v.weight]))
        ref.in_proj_bias.copy_(torch.cat([ours.q.bias, ours.k.bias, ours.v.bias]))
        ref.out_proj.weight.copy_(ours.out.weight)
        ref.out_proj.bias.copy_(ours.out.bias)
    query, memory, pos = torch.randn(b, d), torch.randn(b, t, d), torch.randn(t, d)
    mask = torch.arange(t)[None] < torch.tensor([[7], [1], [4]])
    got = ours(query, (memory + pos).transpose(1, 2), memory, mask)
    want, _ = ref(query[:, None], memory + pos, memory, key_padding_mask=~mask)
    torch.testing.assert_close(got, want[:, 0], atol=1e-5, rtol=1e-5)


def test_decoder_self_attention_matches_one_token_attention():
    torch.manual_seed(0)
    layer = SingleQueryDecoderLayer(16, 4, 32, dropout=0.0).eval()
    ref = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight[32:].copy_(layer.self_v.weight)
        ref.in_proj_bias[32:].copy_(layer.self_v.bias)
        ref.out_proj.weight.copy_(layer.self_out.weight)
        ref.out_proj.bias.copy_(layer.self_out.bias)
    tgt, pos = torch.randn(3, 16), torch.randn(16)
    want, _ = ref((tgt + pos)[:, None], (tgt + pos)[:, None], tgt[:, None])
    torch.testing.assert_close(layer._self_attention(tgt), want[:, 0], atol=1e-5, rtol=1e-5)


def test_self_attention_with_position_matches_multihead_attention():
    torch.manual_seed(0)
    d, h, b, t = 16, 4, 2, 6
    ours = SelfAttention(d, h).eval()
    ref = nn.MultiheadAttention(d, h, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv.weight)
        ref.in_proj_bias.copy_(ours.qkv.bias)
        ref.out_proj.weight.copy_(ours.out.weight)
        ref.out_proj.bias.copy_(ours.out.bias)
    x, pos = torch.randn(b, t, d), torch.randn(t, d)
    mask = torch.arange(t)[None] < torch.tensor([[6], [2]])
    got = ours(x, mask[:, None, None, :], pos)
    want, _ = ref(x + pos, x + pos, x, key_padding_mask=~mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# -- span geometry ----------------------------------------------------------------------------
def test_detr_spans_become_moments_inside_the_track_range():
    cw = torch.tensor([[0.5, 0.2], [0.02, 0.2], [0.98, 0.3], [0.5, -0.1], [1.5, 0.1]])
    start, end = span_ops.cw_to_seconds(cw)
    assert ((start >= 0) & (end >= start) & (end <= 240)).all()
    torch.testing.assert_close(start[:3], torch.tensor([96.0, 0.0, 199.2]))
    torch.testing.assert_close(end[:3], torch.tensor([144.0, 28.8, 240.0]))
    assert end[3] == start[3] and start[4] == end[4] == 240  # negative width, past the end


def test_span_roundtrip_and_parity_with_numpy():
    g = np.random.default_rng(0)
    cw = g.uniform(0, 1, (50, 2))
    se = span_ops.cw_to_se(torch.from_numpy(cw))
    np.testing.assert_allclose(se.numpy(), np_spans.cw_to_se(cw))
    np.testing.assert_allclose(span_ops.se_to_cw(se).numpy(), cw, atol=1e-12)
    pred, gt = g.uniform(-20, 260, (200, 2)), np.sort(g.uniform(0, 260, (200, 2)), axis=1)
    dur = g.uniform(30, 240, 200)
    got = span_ops.temporal_iou(*(torch.from_numpy(a) for a in (pred, gt, dur)))
    np.testing.assert_allclose(got.numpy(), np_spans.temporal_iou(pred, gt, dur), atol=1e-12)


@pytest.mark.parametrize(
    ("a", "b", "iou", "giou"),
    [
        ((0.5, 0.2), (0.5, 0.2), 1.0, 1.0),  # identical
        ((0.5, 0.2), (0.55, 0.2), 0.6, 0.6),  # [.4,.6] vs [.45,.65]: inter .15, union .25
        ((0.15, 0.1), (0.4, 0.2), 0.0, -0.25),  # [.1,.2] vs [.3,.5]: hull .4, union .3
        ((0.5, 0.4), (0.5, 0.1), 0.25, 0.25),  # containment
    ],
)
def test_giou_hand_cases(a, b, iou, giou):
    ta, tb = torch.tensor([a]), torch.tensor([b])
    assert math.isclose(float(span_ops.span_iou(ta, tb)), iou, abs_tol=1e-6)
    assert math.isclose(float(span_ops.generalized_span_iou(ta, tb)), giou, abs_tol=1e-6)


# -- losses -----------------------------------------------------------------------------------
def test_info_nce_shared_track_is_not_negative():
    logits = torch.tensor([[2.0, 0.5], [1.0, -1.0], [0.0, 3.0]])
    music_index = torch.tensor([0, 0, 1])  # videos 0 and 1 share track 0
    lse = lambda x: math.log(sum(math.exp(v) for v in x))  # noqa: E731
    v2m = (lse([2.0, 0.5]) - 2.0 + lse([1.0, -1.0]) - 1.0 + lse([0.0, 3.0]) - 3.0) / 3
    m2v = ((lse([2.0, 1.0, 0.0]) - lse([2.0, 1.0])) + (lse([0.5, -1.0, 3.0]) - 3.0)) / 2
    assert math.isclose(float(info_nce(logits, music_index)), 0.5 * (v2m + m2v), rel_tol=1e-6)


def test_loss_terms_finite_positive_and_weighted():
    model = tiny_model().train()
    batch = make_batch()
    terms = made_losses(run(model, batch), batch["music_index"], batch["target_cw"],
                        loss_weights())
    floats = terms.as_floats()
    assert set(floats) == {"total", "l1", "giou", "fg", "snippet", "dual", "xpool"}
    assert all(math.isfinite(v) and v > 0 for v in floats.values())
    w = loss_weights()
    want = sum(getattr(w, k) * floats[k]
               for k in ("l1", "giou", "fg", "snippet", "dual", "xpool"))
    assert math.isclose(floats["total"], want, rel_tol=1e-5)
    no_aux = made_losses(run(model.eval(), batch), batch["music_index"], batch["target_cw"],
                         loss_weights(aux=False))
    assert no_aux.l1 < made_losses(run(model, batch), batch["music_index"],
                                   batch["target_cw"], loss_weights()).l1


def test_training_reduces_loss_and_trains_query_position():
    model = tiny_model(temporal_dropout=0.0, detector_dropout=0.0).train()
    batch = make_batch(b=8, u=4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        terms = made_losses(run(model, batch), batch["music_index"], batch["target_cw"],
                            loss_weights())
        opt.zero_grad()
        terms.total.backward()
        if not losses:
            grad = model.detector.query_pos.grad
            assert grad is not None and grad.abs().sum() > 0
            assert model.log_temperature.grad is not None
        opt.step()
        losses.append(float(terms.total.detach()))
    assert losses[-1] < 0.6 * losses[0]


def test_bf16_autocast_close_to_fp32():
    model = tiny_model().eval()
    batch = make_batch()
    ref = run(model, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = run(model, batch)
    for name in ("dual", "xpool", "spans"):
        got = getattr(out, name)
        assert got.dtype == torch.float32 and torch.isfinite(got).all()
        torch.testing.assert_close(got, getattr(ref, name), atol=0.06, rtol=0)
    terms = made_losses(out, batch["music_index"], batch["target_cw"], loss_weights())
    assert terms.total.dtype == torch.float32 and torch.isfinite(terms.total)


# -- input checks and helpers -----------------------------------------------------------------
def test_input_errors():
    model = tiny_model().eval()
    batch = make_batch()
    bad = batch["video_mask"].clone()
    bad[2] = False
    with pytest.raises(ValueError, match=r"rows \[2\] are all padding"):
        model.encode_video(batch["video"], bad)
    with pytest.raises(TypeError, match="bool"):
        model.encode_video(batch["video"], batch["video_mask"].float())
    with pytest.raises(ValueError, match="max_len=12"):
        model.encode_video(torch.randn(1, 13, 12), torch.ones(1, 13, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"music_index values must lie in \[0, 3\)"):
        run(model, {**batch, "music_index": batch["music_index"] + 3})


def test_fast_dropout_rate_and_gradient():
    torch.manual_seed(0)
    x = torch.ones(200_000, requires_grad=True)
    for p in (0.1, 0.8):
        y = fast_dropout(x, p)
        y.sum().backward()
        y = y.detach()
        assert torch.equal(x.grad, y)  # d/dx (x * keep * scale) at x = 1 is y itself
        assert abs(float((y == 0).float().mean()) - p) < 0.01
        assert abs(float(y.mean()) - 1.0) < 0.03
        x.grad = None


def test_snippet_evidence_loss_matches_hand_computation():
    from mgsv_sk.nn.losses import snippet_evidence_loss

    # one video, moment [0, 5] s -> centre 2.5/240, width 5/240; snippets at 0, 2.5, 5, 7.5 s
    target = torch.tensor([[2.5 / 240, 5.0 / 240]])
    logits = torch.tensor([[2.0, 0.0, -1.0, float("-inf")]])  # last snippet is padding
    inside = torch.tensor([1.0, 1.0, 1.0])  # 0, 2.5 and 5 s lie in [0, 5]
    want = torch.nn.functional.binary_cross_entropy_with_logits(logits[0, :3], inside)
    assert torch.isclose(snippet_evidence_loss(logits, target), want)


def test_query_sees_the_video_length():
    # The number of valid frames reaches the span head through the query's length code.
    model = tiny_model(temporal_dropout=0.0, detector_dropout=0.0).train()
    batch = make_batch()
    run(model, batch).spans[:, :, 1].sum().backward()
    grad = model.detector.query_length.weight.grad
    assert grad is not None and grad.abs().sum() > 0
