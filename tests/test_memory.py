"""The cross-batch track memory: what it stores, what it offers as negatives, and the loss."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from test_nn import make_batch, run, tiny_model

from mgsv_sk.nn import info_nce
from mgsv_sk.nn.model import MusicEncoding
from mgsv_sk.train._memory import TrackMemory
from mgsv_sk.train._training import MEMORY_FROM_EPOCH


def encoding(u: int, s: int, d: int = 4, seed: int = 0) -> MusicEncoding:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, s + 1, (u,), generator=g)
    mask = torch.arange(s)[None] < lengths[:, None]
    tokens = torch.randn(u, s, d, generator=g) * mask[:, :, None]
    return MusicEncoding(tokens, mask, torch.nn.functional.normalize(torch.randn(u, d), dim=1))


def test_memory_keeps_the_newest_encoding_of_each_track_and_evicts_the_oldest():
    memory = TrackMemory(capacity=4)
    assert memory.negatives(["a"]) is None
    first, second = encoding(3, 5, seed=1), encoding(2, 7, seed=2)
    memory.push(first, ["a", "b", "c"])
    memory.push(second, ["c", "d"])  # c again: the newer encoding replaces the old one
    assert len(memory) == 4
    offered = memory.negatives([])
    assert offered is not None
    got = offered.tracks()
    assert got.tokens.shape[0] == 4
    by_track = {m: i for i, m in enumerate(sorted(memory.slot, key=memory.slot.get))}
    c = got.emb[by_track["c"]]
    assert torch.equal(c, second.emb[0])
    # a longer track widened the buffer; a shorter one is zero-padded and masked
    a = by_track["a"]
    n = int(first.mask[0].sum())
    assert int(got.mask[a].sum()) == n and torch.equal(got.tokens[a, :n], first.tokens[0, :n])
    assert not got.tokens[a, n:].any()
    memory.push(encoding(1, 3, seed=3), ["e"])  # full: the oldest entry (a) leaves
    assert set(memory.slot) == {"b", "c", "d", "e"}


def test_memory_never_offers_a_batch_track_as_its_own_negative():
    memory = TrackMemory(capacity=8)
    enc = encoding(3, 6)
    memory.push(enc, ["a", "b", "c"])
    offered = memory.negatives(["b", "x"])
    assert offered is not None
    got = offered.tracks()
    assert sorted(got.emb.tolist()) == sorted(enc.emb[[0, 2]].tolist())
    assert memory.negatives(["a", "b", "c"]) is None


def test_memory_columns_only_add_negatives_to_the_video_to_music_term():
    logits = torch.tensor([[2.0, 0.5], [1.0, -1.0], [0.0, 3.0]])
    extra = torch.tensor([[1.5], [0.0], [2.5]])
    music_index = torch.tensor([0, 0, 1])
    lse = lambda x: math.log(sum(math.exp(v) for v in x))  # noqa: E731
    v2m = (lse([2.0, 0.5, 1.5]) - 2.0 + lse([1.0, -1.0, 0.0]) - 1.0
           + lse([0.0, 3.0, 2.5]) - 3.0) / 3
    m2v = ((lse([2.0, 1.0, 0.0]) - lse([2.0, 1.0])) + (lse([0.5, -1.0, 3.0]) - 3.0)) / 2
    got = info_nce(logits, music_index, extra)
    assert math.isclose(float(got), 0.5 * (v2m + m2v), rel_tol=1e-6)
    assert float(got) > float(info_nce(logits, music_index))  # more negatives, larger loss
    assert float(info_nce(logits, music_index, extra[:, :0])) == float(
        info_nce(logits, music_index))


def test_forward_scores_the_memory_and_its_gradient_reaches_the_video_side_only():
    model = tiny_model().eval()  # no dropout: the direct scores below are the same
    batch = make_batch()  # 5 videos, 3 tracks
    memory = TrackMemory(capacity=16)
    first = run(model, batch)
    assert first.memory_dual.shape == (5, 0) and first.memory_xpool.shape == (5, 0)
    memory.push(first.music, ["t0", "t1", "t2"])
    memory.push(run(model, make_batch(seed=1, u=4)).music, ["t3", "t4", "t5", "t6"])
    negatives = memory.negatives(["t0"])
    assert negatives is not None and not negatives.music.tokens.requires_grad
    out = model(batch["video"], batch["video_mask"], batch["music"], batch["music_mask"],
                batch["music_index"], memory=negatives)
    # the dual score against all 6 stored tracks, X-Pool against the 3 (the batch's number
    # of tracks) closest to the batch's videos
    assert out.memory_dual.shape == (5, 6) and out.memory_xpool.shape == (5, 3)
    video = model.encode_video(batch["video"], batch["video_mask"])
    direct = model.retrieval_scores(video, negatives.tracks())
    torch.testing.assert_close(out.memory_dual, direct.dual)
    hardest = direct.dual.amax(dim=0).topk(3).indices
    torch.testing.assert_close(out.memory_xpool, direct.xpool[:, hardest])
    model.zero_grad()
    (out.memory_dual.sum() + out.memory_xpool.sum()).backward()
    assert all(p.grad is None or not p.grad.any() for p in model.music_encoder.parameters())
    assert any(p.grad is not None and p.grad.any() for p in model.video_encoder.parameters())


def test_a_fit_with_memory_scores_each_batch_against_earlier_batches_tracks(small_train,
                                                                           monkeypatch):
    from conftest import TINY

    from mgsv_sk import MGSVGrounder
    from mgsv_sk.nn.model import MaDe

    seen: list[tuple[int, set[str], int]] = []  # (memory tracks, batch tracks, batch size)
    real_negatives, real_forward = TrackMemory.negatives, MaDe.forward

    def negatives(self, batch_ids):
        got = real_negatives(self, batch_ids)
        seen.append((0 if got is None else got.rows.shape[0], set(batch_ids), len(self)))
        return got

    def forward(self, *args, memory=None):
        out = real_forward(self, *args, memory=memory)
        n = 0 if memory is None else memory.rows.shape[0]
        u = args[2].shape[0]  # the batch's tracks
        assert out.memory_dual.shape[1] == n and out.memory_xpool.shape[1] == min(n, u)
        return out

    monkeypatch.setattr(TrackMemory, "negatives", negatives)
    monkeypatch.setattr(MaDe, "forward", forward)
    est = MGSVGrounder(features=small_train.features, memory_tracks=12,
                       **{**TINY, "batch_size": 16, "max_epochs": 2}).fit(small_train.frame)
    assert MEMORY_FROM_EPOCH == 2 and len(seen) >= 3  # consulted in epoch 2's steps
    assert seen[0][0] == 0  # nothing stored before the first step
    assert all(n <= 12 for n, _, _ in seen) and max(n for n, _, _ in seen) >= 6
    # every stored track not in the batch is offered: the memory minus the batch's tracks
    assert all(n >= stored - len(batch) for n, batch, stored in seen)
    assert all(np.isfinite(row["train_dual"]) for row in est.history_)
    plain = MGSVGrounder(features=small_train.features, memory_tracks=0,
                         **{**TINY, "batch_size": 16, "max_epochs": 2}).fit(small_train.frame)
    # the same first epoch (no memory yet), a different second one
    assert est.history_[0]["train_dual"] == plain.history_[0]["train_dual"]
    assert est.history_[1]["train_dual"] != plain.history_[1]["train_dual"]


def test_a_model_pickled_before_the_memory_existed_unpickles_with_its_default(tiny_fitted,
                                                                             small_train):
    import pickle

    from mgsv_sk import MGSVGrounder

    state = tiny_fitted.__getstate__()
    del state["memory_tracks"]  # as pickled by the release before this parameter
    old = MGSVGrounder.__new__(MGSVGrounder)
    old.__setstate__(state)
    assert old.get_params()["memory_tracks"] == MGSVGrounder().memory_tracks
    again = pickle.loads(pickle.dumps(old))
    rows = small_train.frame.head(4)
    pd.testing.assert_frame_equal(again.predict(rows), tiny_fitted.predict(rows))
