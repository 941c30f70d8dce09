"""Scaling out with Dask: a grid search on a LocalCluster gives the n_jobs=1 results, and
batch prediction over a Dask DataFrame equals OnnxGrounder on the whole frame.

One LocalCluster (2 worker processes, 1 thread each) for the module, always closed; every
test runs under an alarm so that a stuck cluster fails instead of hanging."""

from __future__ import annotations

import doctest
import os
import signal
import sys
import warnings

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from conftest import TINY
from distributed import Client, LocalCluster
from sklearn.model_selection import GridSearchCV, GroupKFold

import mgsv_sk.export._cache as export_cache
import mgsv_sk.export.dask as export_dask
import mgsv_sk.train.dask_search as mgsv_dask
from mgsv_sk import MGSVGrounder, pack_features, protocol_scorer
from mgsv_sk.export.dask import predict_dask, prediction_meta
from mgsv_sk.export.runtime import OnnxGrounder
from mgsv_sk.export.to_onnx import export_onnx

NUMERIC = ["start", "end", "score", "moment_score"]
SEARCH = {**TINY, "max_epochs": 1, "validation_fraction": 0.0}
GRID = {"lr": [3e-4, 1e-3]}
TIMEOUT_S = 120


@pytest.fixture(autouse=True)
def _alarm():
    def fail(signum, frame):
        raise TimeoutError(f"a Dask test ran over {TIMEOUT_S} s")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(TIMEOUT_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def client():
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    try:
        with Client(cluster) as c:
            c.wait_for_workers(2, timeout=60)
            # import torch and mgsv_sk in the workers now, while this process fits the
            # sequential search, rather than in the first task
            yield c
    finally:
        cluster.close(timeout=20)


@pytest.fixture(scope="module")
def packed(small_train, tmp_path_factory):
    return pack_features(small_train.features, tmp_path_factory.mktemp("dask") / "packed",
                         annotations=small_train.frame)


def make_search(features, n_jobs=None):
    return GridSearchCV(MGSVGrounder(features=features, **SEARCH), GRID,
                        scoring=protocol_scorer(["miou", "r1"]), refit="miou",
                        cv=GroupKFold(n_splits=3), n_jobs=n_jobs)


@pytest.fixture(scope="module")
def sequential(small_train):
    df = small_train.frame
    return make_search(small_train.features, n_jobs=1).fit(df, groups=df["music_id"])


def assert_same_search(got, want):
    assert got.best_params_ == want.best_params_
    assert got.best_index_ == want.best_index_
    for key, value in want.cv_results_.items():
        if key.startswith(("split", "mean_test", "std_test", "rank_test")):
            np.testing.assert_allclose(got.cv_results_[key], value, rtol=0, atol=1e-12,
                                       err_msg=key)


# -- grid search on the cluster --------------------------------------------------------------
def test_grid_search_on_dask_matches_n_jobs_1(client, small_train, sequential):
    df = small_train.frame
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        search = mgsv_dask.grid_search_on_dask(make_search(small_train.features), df,
                                               client=client, groups=df["music_id"])
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert_same_search(search, sequential)
    # the fits ran in the workers, whose nanny caps torch at one thread each
    assert set(client.run(lambda: __import__("torch").get_num_threads()).values()) == {1}


def test_joblib_dask_backend_with_a_packed_store(client, small_train, packed, sequential):
    """The documented pattern without the helper (one candidate, to keep it short); the
    store travels as its path and gives the scores of the in-memory features."""
    import joblib

    df = small_train.frame
    search = make_search(str(packed.path), n_jobs=-1).set_params(param_grid={"lr": [1e-3]})
    with joblib.parallel_config(backend="dask"):
        search.fit(df, groups=df["music_id"])
    want = sequential.cv_results_["params"].index({"lr": 1e-3})
    for key in ("split0_test_miou", "split1_test_miou", "split2_test_miou", "mean_test_r1"):
        assert search.cv_results_[key][0] == sequential.cv_results_[key][want], key


def test_feature_path_missing_on_workers_fails_before_fitting(client, small_train, tmp_path):
    search = make_search(str(tmp_path / "nowhere"))
    # every worker lacks it (on a loaded machine a worker may be restarting: count, not 2)
    with pytest.raises(FileNotFoundError, match=r"not a folder on (\d+) of \1 Dask worker"):
        mgsv_dask.grid_search_on_dask(search, small_train.frame, client=client)
    assert not hasattr(search, "cv_results_")


class FakeClient:
    """What the checks read from a client: worker pids and thread counts."""

    def __init__(self, pids, nthreads):
        self._pids, self._nthreads = pids, nthreads

    def run(self, fn, *args):
        return {a: (p if fn is os.getpid else True) for a, p in self._pids.items()}

    def nthreads(self):
        return self._nthreads


def test_workers_sharing_a_process_are_warned_about():
    threaded = FakeClient({"tcp://h:1": 10, "tcp://h:2": 11}, {"tcp://h:1": 2, "tcp://h:2": 1})
    with pytest.warns(RuntimeWarning, match="not reproducible"):
        mgsv_dask._check_workers(threaded)
    in_process = FakeClient({"tcp://h:1": 10, "tcp://h:2": 10}, {"tcp://h:1": 1, "tcp://h:2": 1})
    with pytest.warns(RuntimeWarning, match="threads per process: \\[2\\]"):
        mgsv_dask._check_workers(in_process)
    separate = FakeClient({"tcp://h:1": 10, "tcp://g:1": 10}, {"tcp://h:1": 1, "tcp://g:1": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mgsv_dask._check_workers(separate)


def test_large_in_memory_features_are_warned_about(small_train, monkeypatch):
    monkeypatch.setattr(mgsv_dask, "IN_MEMORY_WARN_BYTES", 1)
    fake = FakeClient({}, {})
    with pytest.warns(RuntimeWarning, match="pack_features"):
        mgsv_dask._check_features(fake, make_search(small_train.features), {})


def test_no_client_is_a_clear_error(monkeypatch, small_train):
    import distributed

    def none():
        raise ValueError("No global client found")

    monkeypatch.setattr(distributed, "get_client", none)
    with pytest.raises(ValueError, match="found no Dask client: pass client="):
        mgsv_dask.grid_search_on_dask(make_search(small_train.features), small_train.frame)


# -- batch prediction with the ONNX runtime --------------------------------------------------
@pytest.fixture(scope="module")
def bundle(tiny_fitted, tmp_path_factory):
    return export_onnx(tiny_fitted, tmp_path_factory.mktemp("dask_onnx") / "bundle")


@pytest.fixture(scope="module")
def served(bundle, packed):
    return OnnxGrounder.load(bundle, 1, features=str(packed.path))


def assert_same_frame(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    assert got.index.equals(want.index)
    assert (got.dtypes == want.dtypes).all(), (got.dtypes, want.dtypes)
    for col in ("video_id", "music_id", "rank"):
        if col in want:
            assert got[col].tolist() == want[col].tolist(), col
    np.testing.assert_allclose(got[NUMERIC].to_numpy(), want[NUMERIC].to_numpy(),
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("mode", ["smg", "msg"])
def test_predict_dask_equals_the_runtime_on_the_whole_frame(client, small_train, bundle,
                                                            packed, served, mode):
    df = small_train.frame.set_index(small_train.frame.index * 10 + 7)  # a non-trivial index
    ddf = dd.from_pandas(df, npartitions=3)
    out = predict_dask(ddf, bundle, str(packed.path), mode=mode)
    assert out.divisions == ddf.divisions
    got = client.compute(out).result(timeout=60)
    want = served.predict(df if mode == "smg" else df.drop(columns="music_id"))
    assert_same_frame(got, want)
    assert (got.dtypes == out._meta.dtypes).all()
    # each worker process loaded the bundle once, however many partitions it computed
    loaded = client.run(lambda: sum(k[0] == "bundle" for k in export_cache._cache))
    assert set(loaded.values()) <= {0, 1} and sum(loaded.values()) >= 1


@pytest.mark.filterwarnings("ignore:Sending large graph:UserWarning")  # the features, once
def test_predict_dask_rank_and_in_memory_features(client, small_train, bundle, served):
    df = small_train.frame.drop(columns="music_id")
    ddf = dd.from_pandas(df, npartitions=3)
    got = client.compute(predict_dask(ddf, bundle, small_train.features, mode="rank", k=3)
                         ).result(timeout=60)
    want = served.rank(df, k=3)
    assert got.index.tolist() == df.index.repeat(3).tolist()  # rows keep their video's label
    assert_same_frame(got.reset_index(drop=True), want)


def test_predict_dask_handles_empty_partitions(client, small_train, bundle, packed, served):
    df = small_train.frame.assign(row=np.arange(len(small_train.frame)))
    ddf = dd.from_pandas(df, npartitions=3)
    kept = ddf[ddf["row"] < 30]  # the second and third partitions become empty
    got = client.compute(predict_dask(kept, bundle, str(packed.path))).result(timeout=60)
    assert len(got) == 30
    assert_same_frame(got, served.predict(df[df["row"] < 30]))


def test_missing_bundle_is_a_clear_error(client, small_train, packed, tmp_path):
    ddf = dd.from_pandas(small_train.frame, npartitions=3)
    missing = tmp_path / "no_bundle"
    with pytest.raises(FileNotFoundError, match="no ONNX bundle at .*no_bundle"):
        predict_dask(ddf, missing, str(packed.path))
    lazy = predict_dask(ddf, missing, str(packed.path), check_bundle=False)
    with pytest.raises(FileNotFoundError, match="no ONNX bundle at .*no_bundle"):
        client.compute(lazy).result(timeout=60)  # raised in a worker, re-raised here


def test_bad_arguments_fail_clearly(small_train, bundle, packed):
    df = small_train.frame
    ddf = dd.from_pandas(df, npartitions=2)
    with pytest.raises(TypeError, match="from_pandas"):
        predict_dask(df, bundle, str(packed.path))
    with pytest.raises(ValueError, match="mode must be one of"):
        predict_dask(ddf, bundle, str(packed.path), mode="v2mr")
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['music_id'\]"):
        predict_dask(ddf[["video_id"]], bundle, str(packed.path), mode="smg")
    with pytest.raises(ValueError, match="k must be a positive integer"):
        predict_dask(ddf, bundle, str(packed.path), mode="rank", k=0)
    assert list(prediction_meta("rank").columns) == list(OnnxGrounder.load(bundle).rank(
        df.iloc[:1], k=1, features=str(packed.path)).columns)


def test_module_doctests():
    assert doctest.testmod(export_dask).failed == 0
    assert doctest.testmod(mgsv_dask).failed == 0


def test_missing_dask_gives_the_install_hint(monkeypatch, small_train, bundle, packed):
    monkeypatch.setitem(sys.modules, "dask.dataframe", None)
    with pytest.raises(ImportError, match=r'pip install "mgsv-sk\[dask\]"'):
        predict_dask(small_train.frame, bundle, str(packed.path))
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r'pip install "mgsv-sk\[dask\]"'):
        mgsv_dask.grid_search_on_dask(make_search(small_train.features), small_train.frame)
