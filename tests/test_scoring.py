"""Scorers: registry, agreement with the metrics, one prediction pass, sklearn model selection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import GridSearchCV, GroupKFold, cross_validate

from mgsv_sk import RidgeGrounder, TrivialGrounder, evaluate, get_scorer, protocol_scorer
from mgsv_sk.data.spans import temporal_iou
from mgsv_sk.evaluation.metrics import retrieval_ranks, retrieval_report
from mgsv_sk.evaluation.scoring import SCORER_NAMES


class CountingRidge(RidgeGrounder):
    predict_calls = 0
    decision_calls = 0

    def predict(self, X, features=None):
        type(self).predict_calls += 1
        return super().predict(X, features)

    def decision_function(self, X, features=None, music_ids=None):
        type(self).decision_calls += 1
        return super().decision_function(X, features, music_ids)


@pytest.fixture(scope="module")
def fitted(small_train):
    return RidgeGrounder(features=small_train.features).fit(small_train.frame)


def test_names_and_unknown_name_lists_valid_ones():
    for name in ("miou", "iou@0.5", "r1", "r10", "mor1@0.5", "mor1@0.7", "mrr"):
        assert name in SCORER_NAMES
    with pytest.raises(ValueError, match="unknown scorer name.*valid names are: miou"):
        get_scorer("mIOU@0.5")


def test_scorers_agree_with_the_metric_functions(fitted, small_train):
    X = small_train.frame
    pred = fitted.predict(X)
    ious = temporal_iou(
        pred[["start", "end"]].to_numpy(),
        X[["music_start", "music_end"]].to_numpy(),
        X["music_total_duration"].to_numpy(),
    )
    gallery = list(pd.unique(X["music_id"]))
    ranks = retrieval_ranks(
        fitted.decision_function(X, music_ids=gallery),
        np.array(gallery, dtype=object),
        X["music_id"].to_numpy(dtype=object),
    )
    assert get_scorer("miou")(fitted, X) == pytest.approx(ious.mean())
    assert get_scorer("iou@0.5")(fitted, X) == pytest.approx((ious > 0.5).mean())
    assert get_scorer("r1")(fitted, X) == pytest.approx(retrieval_report(ranks)["R@1"])
    assert get_scorer("mor1@0.5")(fitted, X) == pytest.approx(((ranks < 1) & (ious > 0.5)).mean())
    assert get_scorer("neg_median_rank")(fitted, X) == -retrieval_report(ranks)["MedianR"]
    assert fitted.score(X) == pytest.approx(ious.mean())
    full = evaluate(fitted, X)
    assert full["mIoU"] == pytest.approx(ious.mean()) and "MoR@100,0.7" in full
    assert all(0.0 <= v <= 1.0 for k, v in full.items() if not k.endswith("R"))


def test_one_prediction_pass_for_many_metrics(small_train):
    X = small_train.frame
    est = CountingRidge(features=small_train.features).fit(X)
    CountingRidge.predict_calls = CountingRidge.decision_calls = 0
    values = protocol_scorer(["miou", "iou@0.7", "r1", "r10", "mor1@0.5"])(est, X)
    assert set(values) == {"miou", "iou@0.7", "r1", "r10", "mor1@0.5"}
    assert (CountingRidge.predict_calls, CountingRidge.decision_calls) == (1, 1)
    # named scorers in a dict share the pass too (sklearn calls them one by one)
    CountingRidge.predict_calls = CountingRidge.decision_calls = 0
    X2 = X.copy()
    for name in ("miou", "iou@0.5", "r1", "mor1@0.7"):
        get_scorer(name)(est, X2)
    assert (CountingRidge.predict_calls, CountingRidge.decision_calls) == (1, 1)
    # a refit is a new model: no stale reuse
    est.fit(X)
    get_scorer("miou")(est, X2)
    assert CountingRidge.predict_calls == 2


def test_cross_validate_with_a_scorer_dict_predicts_once_per_fold(small_train):
    X = small_train.frame
    CountingRidge.predict_calls = CountingRidge.decision_calls = 0
    scoring = {n: get_scorer(n) for n in ("miou", "iou@0.5", "r1", "mor1@0.5")}
    res = cross_validate(
        CountingRidge(features=small_train.features),
        X,
        groups=X["music_id"],
        cv=GroupKFold(3),
        scoring=scoring,
    )
    assert CountingRidge.predict_calls == 3 and CountingRidge.decision_calls == 3
    assert np.all(res["test_miou"] > 0)


def test_grid_search_with_protocol_scorer_and_refit(small_train):
    X = small_train.frame
    search = GridSearchCV(
        RidgeGrounder(features=small_train.features),
        {"alpha": [100.0, 1e6]},
        scoring=protocol_scorer(["miou", "r1", "mor1@0.5"]),
        refit="miou",
        cv=GroupKFold(3),
    ).fit(X, groups=X["music_id"])
    # a crushing penalty flattens the moment map, so grounding falls towards chance
    assert search.best_params_ == {"alpha": 100.0}
    assert search.cv_results_["mean_test_miou"][0] > search.cv_results_["mean_test_miou"][1] + 0.1
    assert set(search.cv_results_) >= {"mean_test_miou", "mean_test_r1", "mean_test_mor1@0.5"}


def test_scoring_needs_ground_truth_columns(fitted, small_train):
    X = small_train.frame.drop(columns=["music_end"])
    with pytest.raises(ValueError, match="missing column 'music_end'"):
        get_scorer("miou")(fitted, X)


def test_trivial_scores_its_known_value(small_test):
    t = TrivialGrounder().fit(small_test.frame)
    X = small_test.frame
    expected = temporal_iou(
        np.column_stack([np.zeros(len(X)), X["video_segment_duration"]]),
        X[["music_start", "music_end"]].to_numpy(),
        X["music_total_duration"].to_numpy(),
    ).mean()
    assert t.score(X) == pytest.approx(expected)
