"""Issue 12, family 3: a scorer never returns a result for data that changed.

The prediction cache shared by the scorers is keyed on the estimator's fit token, its
parameters and a content hash of X (not X's identity): scorers called in a row on the
same data share one prediction pass, and an X edited in place, a refit or set_params is
predicted again.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY

from mgsv_sk import MGSVGrounder, RidgeGrounder, get_scorer, make_synthetic_mgsv, protocol_scorer


class CountingRidge(RidgeGrounder):
    def __init__(self, features=None, alpha=1.0):
        super().__init__(features=features, alpha=alpha)
        self.calls = {"predict": 0, "decision_function": 0}

    def predict(self, X, features=None):
        self.calls["predict"] += 1
        return super().predict(X, features)

    def decision_function(self, X, features=None, music_ids=None):
        self.calls["decision_function"] += 1
        return super().decision_function(X, features, music_ids)


@pytest.fixture(scope="module")
def data():
    return make_synthetic_mgsv(40, 10, random_state=5)


@pytest.fixture
def ridge(data):
    return CountingRidge(features=data.features).fit(data.frame)


def test_scorers_in_a_row_on_the_same_data_share_one_pass(ridge, data):
    X = data.frame.copy()
    for name in ("miou", "iou@0.5", "r1", "mrr"):
        get_scorer(name)(ridge, X)
    assert ridge.calls == {"predict": 1, "decision_function": 1}


def test_an_in_place_edit_of_the_ground_truth_changes_the_score(ridge, data):
    X = data.frame.copy()
    miou = get_scorer("miou")
    before = miou(ridge, X)
    X.loc[:, "music_start"] = 0.0  # moments moved, same object
    X.loc[:, "music_end"] = 0.5
    after = miou(ridge, X)
    assert after != pytest.approx(before)
    assert ridge.calls["predict"] == 2
    assert after == pytest.approx(miou(ridge, X.copy()))  # and it is the right value


def test_an_in_place_edit_of_the_ids_changes_the_retrieval_score(ridge, data):
    X = data.frame.copy()
    r1 = get_scorer("r1")
    before = r1(ridge, X)
    shuffled = X["music_id"].to_numpy()[np.random.default_rng(0).permutation(len(X))]
    X["music_id"] = shuffled  # every video now claims another video's track
    after = r1(ridge, X)
    assert ridge.calls["decision_function"] == 2
    fresh = CountingRidge(features=data.features).fit(data.frame)
    assert after == pytest.approx(r1(fresh, X.copy())) and after != pytest.approx(before)


def test_a_refit_or_set_params_is_predicted_again(ridge, data):
    X = data.frame.copy()
    multi = protocol_scorer(["miou", "r1"])
    first = multi(ridge, X)
    ridge.set_params(alpha=1e4)  # same fit, other parameters: may predict otherwise
    multi(ridge, X)
    assert ridge.calls["predict"] == 2
    ridge.fit(data.frame)
    multi(ridge, X)
    assert ridge.calls["predict"] == 3
    ridge.set_params(alpha=1.0).fit(data.frame)
    assert multi(ridge, X) == pytest.approx(first)


def test_the_neural_grounder_is_rescored_after_an_in_place_edit(tmp_path):
    data = make_synthetic_mgsv(16, 6, random_state=2)
    model = MGSVGrounder(features=data.features, **{**TINY, "max_epochs": 1}).fit(data.frame)
    X = data.frame.copy()
    miou = get_scorer("miou")
    before = miou(model, X)
    X.loc[:, "music_start"] = X["music_total_duration"] - 1.0  # the last second of each track
    X.loc[:, "music_end"] = X["music_total_duration"]
    after = miou(model, X)
    assert after != pytest.approx(before)
    assert after == pytest.approx(miou(model, X.copy()))
