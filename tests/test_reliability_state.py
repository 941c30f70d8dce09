"""Issue 12, families 3, 4 and 8: parameters are checked before any fitted state changes,
every row of X gets its own output row, and what is guaranteed about determinism."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from conftest import TINY
from sklearn.utils._param_validation import InvalidParameterError

from mgsv_sk import MGSVGrounder

BAD = [
    ({"d_model": -4}, "'d_model' parameter"),
    ({"lr": float("nan")}, "'lr' parameter"),
    ({"weight_decay": -5}, "'weight_decay' parameter"),
    ({"grad_clip": float("nan")}, "'grad_clip' parameter"),
    ({"n_threads": 0}, "'n_threads' parameter"),
    ({"xpool_top_k": 1.5}, "'xpool_top_k' parameter"),
    ({"detector": "bogus"}, "'detector' parameter"),
    ({"batch_size": 0}, "'batch_size' parameter"),
    ({"d_model": 30, "n_heads": 4}, "d_model must be divisible by n_heads"),
]


@pytest.mark.parametrize("bad,message", BAD, ids=[next(iter(b)) + str(i) for i, (b, _)
                                                   in enumerate(BAD)])
def test_a_refit_with_a_bad_parameter_leaves_the_previous_model(tiny_fitted, small_train,
                                                                bad, message):
    est = copy.deepcopy(tiny_fitted)
    X = small_train.frame.iloc[:10]
    before = est.predict(X)
    model, token = est.model_, est.fit_token_
    good = {k: getattr(est, k) for k in bad}
    est.set_params(**bad)
    with pytest.raises(ValueError, match=message):
        est.fit(small_train.frame)
    assert est.model_ is model and est.fit_token_ == token  # nothing fitted was touched
    est.set_params(**good)
    pd.testing.assert_frame_equal(est.predict(X), before)


def test_every_bad_parameter_is_named_in_one_message(small_train):
    est = MGSVGrounder(features=small_train.features, lr=float("nan"), weight_decay=-5,
                       grad_clip=float("nan"))
    with pytest.raises(InvalidParameterError) as err:
        est.fit(small_train.frame)
    text = str(err.value)
    assert all(f"'{n}' parameter" in text for n in ("lr", "weight_decay", "grad_clip"))
    assert isinstance(err.value, ValueError) and isinstance(err.value, TypeError)


def test_random_state_accepts_what_scikit_learn_accepts(small_train):
    kw = {**TINY, "max_epochs": 1, "random_state": None}
    a = MGSVGrounder(features=small_train.features, **{**kw, "random_state":
                                                       np.random.RandomState(3)})
    b = MGSVGrounder(features=small_train.features, **{**kw, "random_state":
                                                       np.random.RandomState(3)})
    X = small_train.frame.iloc[:8]
    # equal RandomStates give equal seeds, hence equal models
    np.testing.assert_array_equal(a.fit(small_train.frame).predict(X)[["start", "score"]],
                                  b.fit(small_train.frame).predict(X)[["start", "score"]])


def test_repeated_rows_each_get_their_row(tiny_fitted, small_train):
    X = small_train.frame.iloc[[0, 1, 0, 2, 1, 1]].set_index(pd.Index([10, 11, 10, 12, 13, 11]))
    for query in (X, X.drop(columns="music_id")):
        out = tiny_fitted.predict(query)
        assert out.index.equals(query.index) and len(out) == 6
        single = tiny_fitted.predict(query.iloc[[0, 1, 3]])
        # (float32 sums depend on the batch by ~1e-7)
        np.testing.assert_allclose(out.iloc[[0, 2]][["start", "end", "score"]],
                                   single.iloc[[0, 0]][["start", "end", "score"]], atol=1e-5)
        np.testing.assert_allclose(out.iloc[[1, 4, 5]][["start", "end", "score"]],
                                   single.iloc[[1, 1, 1]][["start", "end", "score"]], atol=1e-5)
    # one video asked about two tracks is two questions, not a conflict
    two = small_train.frame.iloc[[0, 0]].assign(music_id=small_train.frame["music_id"].iloc[
        [0, 5]].to_numpy())
    out = tiny_fitted.predict(two)
    assert out["music_id"].tolist() == two["music_id"].tolist()
    ranked = tiny_fitted.rank(X.drop(columns="music_id"), k=2)
    assert ranked["video_id"].tolist() == np.repeat(X["video_id"].to_numpy(), 2).tolist()


def test_determinism_as_documented(small_train):
    """One torch thread: two fits with one seed predict identically. Two threads: parallel
    reductions may change the last bits, predictions agree within 1e-4."""
    X = small_train.frame.iloc[:20]
    cols = ["start", "end", "score", "moment_score"]

    def fit(threads: int) -> pd.DataFrame:
        return MGSVGrounder(features=small_train.features,
                            **{**TINY, "max_epochs": 2, "n_threads": threads}
                            ).fit(small_train.frame).predict(X)[cols]

    assert np.array_equal(fit(1).to_numpy(), fit(1).to_numpy())
    np.testing.assert_allclose(fit(2).to_numpy(), fit(2).to_numpy(), atol=1e-4, rtol=0)
