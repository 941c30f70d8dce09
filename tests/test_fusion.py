"""The re-ranking weight chosen on the validation split (``moment_weight="auto"``): the
rule on planted scores, and a fit that chooses, uses, saves and loads it."""

from __future__ import annotations

import numpy as np
import pytest

from mgsv_sk import MGSVGrounder, make_synthetic_mgsv
from mgsv_sk.train._fusion import WEIGHTS, choose_weight


def _planted(moment_knows: bool, seed: int = 0):
    """40 videos, 30 tracks; retrieval puts the true track among each video's best 5 but
    first only for a quarter of them; the moment score tells the truth or misleads."""
    rng = np.random.default_rng(seed)
    n, g, d = 40, 30, 5
    truth = rng.integers(0, g, n)
    table = rng.normal(0, 0.1, (n, g))
    top = np.argsort(-table, axis=1)[:, :d].copy()
    for i in range(n):  # the true track among the candidates, at a random place
        if truth[i] not in top[i]:
            top[i, rng.integers(1, d)] = truth[i]
        table[i, top[i]] = np.sort(rng.uniform(1.0, 1.1, d))[::-1]
        if i % 4 == 0:
            table[i, truth[i]] = 1.2  # retrieval alone is right for a quarter
    hit = top == truth[:, None]
    moment = np.where(hit, 0.95, 0.05) if moment_knows else np.where(hit, 0.05, 0.95)
    ids = [f"t{j}" for j in range(g)]
    return table, top, moment, ids, [ids[t] for t in truth]


def test_a_telling_moment_score_gets_weight_and_a_misleading_one_none():
    weight, scores = choose_weight(*_planted(moment_knows=True))
    assert weight > 0 and scores[f"{weight:g}"] == 1.0 and scores["0"] == pytest.approx(0.25)
    assert list(scores) == [f"{w:g}" for w in WEIGHTS]
    weight, scores = choose_weight(*_planted(moment_knows=False))
    assert scores["0"] == pytest.approx(0.25) and weight == 0.0
    assert all(r1 < 0.25 for w, r1 in scores.items() if w != "0")


@pytest.fixture(scope="module")
def fitted():
    data = make_synthetic_mgsv(240, 24, random_state=0)
    model = MGSVGrounder(features=data.features, d_model=32, n_heads=2, max_epochs=1,
                         batch_size=32, random_state=0, n_threads=1,
                         validation_fraction=0.25).fit(data.frame)
    return data, model


def test_auto_weight_is_chosen_on_validation_and_used(fitted, tmp_path):
    data, model = fitted
    assert model.moment_weight_ in WEIGHTS
    assert set(model.moment_weight_scores_) == {f"{w:g}" for w in WEIGHTS}
    best = max(model.moment_weight_scores_.values())
    assert model.moment_weight_scores_[f"{model.moment_weight_:g}"] == best
    assert model.reranking()[0] == model.moment_weight_
    query = data.frame.drop(columns="music_id").head(8)
    explicit = model.rank(query, k=5, moment_weight=model.moment_weight_)
    assert model.rank(query, k=5).equals(explicit)
    model.save(tmp_path / "m")
    loaded = MGSVGrounder.load(tmp_path / "m", features=data.features)
    assert loaded.moment_weight_ == model.moment_weight_
    assert loaded.moment_weight_scores_ == model.moment_weight_scores_
    assert loaded.reranking() == model.reranking()


def test_a_set_weight_or_no_validation_split_is_not_tuned():
    data = make_synthetic_mgsv(120, 12, random_state=1)
    kw = dict(features=data.features, d_model=32, n_heads=2, max_epochs=1, batch_size=32,
              random_state=0, n_threads=1)
    fixed = MGSVGrounder(moment_weight=0.3, validation_fraction=0.25, **kw).fit(data.frame)
    assert fixed.moment_weight_ is None and fixed.reranking()[0] == 0.3
    none = MGSVGrounder(validation_fraction=0, **kw).fit(data.frame)
    assert none.moment_weight_ is None and none.reranking()[0] == 0.05
