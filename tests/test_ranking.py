"""The catalogue ranker: chunked scoring equals the model's all-pairs scores, two-stage search,
and the catalogue's cached encodings equal a fresh encoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mgsv_sk.infer.batched import video_embeddings
from mgsv_sk.infer.catalogue import MusicCatalogue
from mgsv_sk.infer.padding import pad_stack
from mgsv_sk.search import top_k_indices, top_k_rows


@pytest.fixture(scope="module")
def parts(tiny_fitted, small_test):
    model = tiny_fitted.model_
    frame = small_test.frame
    ids = list(frame["music_id"].unique())
    catalogue = MusicCatalogue.build(model, ids, small_test.features, batch_size=7)
    emb = video_embeddings(model, frame["video_id"].tolist(), small_test.features)
    return model, catalogue, emb, small_test


def test_chunked_scores_equal_the_models_all_pairs(parts):
    model, catalogue, emb, data = parts
    music, mask = pad_stack([data.features.music(m) for m in catalogue.ids])
    video, vmask = pad_stack([data.features.video(v) for v in data.frame["video_id"]])
    with torch.no_grad():
        full = model.retrieval_scores(model.encode_video(video, vmask),
                                      model.encode_music(music, mask)).total.numpy()
    for chunk in (1, 7, 1000):
        np.testing.assert_allclose(catalogue.scores(model, emb, track_chunk=chunk), full,
                                   atol=1e-5)


def test_two_stage_search(parts):
    model, catalogue, emb, _ = parts
    full = catalogue.scores(model, emb)
    np.testing.assert_allclose(catalogue.scores(model, emb, xpool_top_k=len(catalogue)), full,
                               atol=1e-6)
    k = 5
    two = catalogue.scores(model, emb, xpool_top_k=k)
    dual = emb.numpy() @ catalogue.emb(np.arange(len(catalogue))).T
    for b in range(len(two)):
        cand = np.argsort(-dual[b])[:k]
        np.testing.assert_allclose(two[b, cand], full[b, cand], atol=1e-5)
        rest = np.setdiff1d(np.arange(len(catalogue)), cand)
        assert two[b, rest].max() < two[b, cand].min()  # re-ranked tracks come first


def test_cached_tokens_equal_a_fresh_encoding(parts):
    model, catalogue, _, data = parts
    rows = np.array([3, 0, 5])
    enc = catalogue.encoding(rows)
    music, mask = pad_stack([data.features.music(catalogue.ids[r]) for r in rows])
    with torch.no_grad():
        fresh = model.encode_music(music, mask)
    np.testing.assert_allclose(enc.tokens[enc.mask].numpy(), fresh.tokens[fresh.mask].numpy(),
                               atol=1e-5)
    np.testing.assert_allclose(enc.emb.numpy(), fresh.emb.numpy(), atol=1e-6)


def test_unknown_ids_are_named(parts):
    _, catalogue, _, _ = parts
    with pytest.raises(KeyError, match="1 music_id.*'nope'.*set_catalogue"):
        catalogue.positions(["nope"])


def test_top_k_keeps_the_lower_column_on_a_tie_across_the_boundary():
    """One top-k rule (full table and candidate lists): ties rank the lower row first,
    also when the tie straddles the k-th place."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        scores = rng.integers(0, 4, (3, 30)).astype(np.float32)
        k = int(rng.integers(1, 30))
        want = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(top_k_indices(scores, k), want)
        perm = rng.permutation(30)  # the same candidates, listed in another order
        _, rows = top_k_rows(scores[:, perm], perm, k)
        np.testing.assert_array_equal(rows, want)
