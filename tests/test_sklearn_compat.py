"""scikit-learn's own estimator checks (with reasoned expected failures), clone, pickle and
GridSearchCV with GroupKFold at n_jobs 1 and 2."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from conftest import TINY
from sklearn.model_selection import GridSearchCV, GroupKFold, cross_validate
from sklearn.utils.estimator_checks import parametrize_with_checks

from mgsv_sk import MGSVGrounder, get_scorer

# X is an MGSV-EC annotation frame (ids and times; the features come from a feature
# source), never a numeric matrix: every check that feeds a random float array to fit is
# expected to fail with the schema error, which is the behaviour we want.
_NUMERIC_X = (
    "fit() receives a random numeric array; MGSVGrounder takes an MGSV-EC annotation "
    "DataFrame and raises a TypeError naming the expected input"
)
EXPECTED_FAILED = {
    name: _NUMERIC_X
    for name in (
        "check_fit_score_takes_y", "check_estimators_overwrite_params",
        "check_dont_overwrite_parameters", "check_estimators_fit_returns_self",
        "check_readonly_memmap_input", "check_n_features_in_after_fitting",
        "check_positive_only_tag_during_fit", "check_estimators_dtypes", "check_complex_data",
        "check_dtype_object", "check_estimators_empty_data_messages",
        "check_estimators_nan_inf", "check_estimator_sparse_tag",
        "check_estimator_sparse_array", "check_estimator_sparse_matrix",
        "check_estimators_pickle", "check_f_contiguous_array_estimator",
        "check_fit2d_1sample", "check_fit2d_1feature", "check_dict_unchanged",
        "check_fit_idempotent", "check_fit_check_is_fitted", "check_n_features_in",
        "check_fit1d", "check_fit2d_predict1d", "check_pipeline_consistency",
        "check_methods_sample_order_invariance", "check_methods_subset_invariance",
    )
}


@parametrize_with_checks(
    [MGSVGrounder(**TINY)], expected_failed_checks=lambda est: EXPECTED_FAILED
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_numeric_input_is_refused_with_the_expected_message(small_train):
    with pytest.raises(TypeError, match="expected a pandas DataFrame in the MGSV-EC schema"):
        MGSVGrounder(features=small_train.features, **TINY).fit(np.zeros((10, 5)))


def test_pickle_of_unfitted_and_fitted(tiny_fitted, small_train):
    X = small_train.frame.iloc[:8]
    again = pickle.loads(pickle.dumps(tiny_fitted))
    np.testing.assert_array_equal(again.decision_function(X), tiny_fitted.decision_function(X))
    assert pickle.loads(pickle.dumps(MGSVGrounder(**TINY))).get_params()["d_model"] == 32


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_grid_search_group_kfold(small_train, n_jobs):
    X = small_train.frame
    grid = {"decoder_layers": [1, 2]}
    scoring = {n: get_scorer(n) for n in ("miou", "r1", "mor1@0.5")}
    search = GridSearchCV(
        MGSVGrounder(features=small_train.features, **{**TINY, "max_epochs": 1}),
        grid, scoring=scoring, refit="miou", cv=GroupKFold(3), n_jobs=n_jobs,
    ).fit(X, groups=X["music_id"])
    assert set(search.best_params_) == {"decoder_layers"}
    for name in scoring:
        values = search.cv_results_[f"mean_test_{name}"]
        assert np.all((0 <= values) & (values <= 1))
    assert search.best_estimator_.predict(X.iloc[:3]).shape == (3, 5)


def test_torch_threads_do_not_oversubscribe_under_joblib(small_train):
    X = small_train.frame
    res = cross_validate(
        MGSVGrounder(features=small_train.features, **{**TINY, "max_epochs": 1,
                                                        "n_threads": None}),
        X, groups=X["music_id"], cv=GroupKFold(2), n_jobs=2, return_estimator=True,
        scoring=get_scorer("miou"),
    )
    import os

    cores = os.cpu_count() or 1
    for est in res["estimator"]:
        assert est.n_threads_ <= max(1, cores // 2)
