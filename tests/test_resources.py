"""Resources in every state: Dask clients closed or never started, a cluster of one worker
with one thread, workers that cannot import the package; stores moved or deleted between
calls; files replaced by folders, FIFOs or links. For each: the documented result, or the
library's own error saying what to do, never an engine's internals and never a hang."""

from __future__ import annotations

import asyncio
import os
import pickle
import shutil
from pathlib import Path

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from _hostile import assert_ours
from conftest import TINY
from distributed import Client, LocalCluster
from hypothesis import given
from hypothesis import strategies as st
from sklearn.model_selection import GridSearchCV, GroupKFold

from mgsv_sk import (
    FeatureTree,
    MGSVGrounder,
    PackedFeatures,
    pack_features,
    read_annotations,
)
from mgsv_sk.errors import ClusterError, MGSVError
from mgsv_sk.export.dask import predict_dask
from mgsv_sk.export.runtime import OnnxGrounder
from mgsv_sk.train.dask_search import grid_search_on_dask

# a generated test that runs past this has hung (the default, 900 s, is for example fits)
pytestmark = pytest.mark.timeout(300)

SEARCH = {**TINY, "max_epochs": 1, "validation_fraction": 0.0}
BLOCK = "import sys\nfor name in ('mgsv_sk', 'export'):\n    sys.modules[name] = None\n"


def pid_score(estimator, X, y=None) -> float:
    """A scorer whose value is the process that ran the fit."""
    return float(os.getpid())


def search(features, scoring=None):
    return GridSearchCV(MGSVGrounder(features=features, **SEARCH), {"lr": [1e-3]},
                        cv=GroupKFold(2), scoring=scoring or pid_score)


@pytest.fixture(scope="module")
def frame(small_train):
    return small_train.frame.head(24).reset_index(drop=True)


@pytest.fixture(scope="module")
def packed(small_train, tmp_path_factory):
    return pack_features(small_train.features, tmp_path_factory.mktemp("res") / "packed",
                         annotations=small_train.frame)


# -- Dask clients and clusters -----------------------------------------------------------------
def test_a_closed_client_is_our_error(frame, small_train):
    client = Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None)
    client.close()
    with pytest.raises(ClusterError) as info:
        grid_search_on_dask(search(small_train.features), frame, groups=frame["music_id"],
                            client=client)
    assert_ours(info.value, "closed", "create a new one")


def test_a_client_never_started_is_our_error(frame, small_train):
    async def unstarted():  # an asynchronous client that nobody awaited
        return Client(processes=False, asynchronous=True, dashboard_address=None)

    client = asyncio.run(unstarted())
    with pytest.raises(ClusterError) as info:
        grid_search_on_dask(search(small_train.features), frame, groups=frame["music_id"],
                            client=client)
    assert_ours(info.value, "not running", "asynchronous=True")


@pytest.fixture(scope="module")
def one_by_one():
    """One worker process with one thread."""
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.wait_for_workers(1, timeout=60)
        yield client


def test_a_one_thread_cluster_runs_the_fits_on_its_worker(one_by_one, frame, small_train):
    # found: joblib ran a pool of one job in the calling process, so the search never
    # used the cluster (and a cluster without the package "worked")
    fitted = grid_search_on_dask(search(small_train.features), frame,
                                 groups=frame["music_id"], client=one_by_one)
    worker_pid = next(iter(one_by_one.run(os.getpid).values()))
    ran_in = {int(fitted.cv_results_[f"split{i}_test_score"][0]) for i in range(2)}
    assert ran_in == {worker_pid} and worker_pid != os.getpid()


def test_predict_dask_on_a_one_thread_cluster_equals_the_runtime(one_by_one, frame,
                                                                exported_bundle, packed):
    want = OnnxGrounder.load(exported_bundle, 1).predict(frame[["video_id", "music_id"]],
                                                         features=packed)
    got = predict_dask(dd.from_pandas(frame[["video_id", "music_id"]], npartitions=3),
                       exported_bundle, packed.path).compute()
    pd.testing.assert_frame_equal(got.sort_index(), want, check_dtype=False)


@pytest.fixture(scope="module")
def without_the_package(tmp_path_factory):
    """A worker whose Python cannot import mgsv_sk or export."""
    preload = tmp_path_factory.mktemp("preload") / "block_mgsv.py"
    preload.write_text(BLOCK)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      preload=[str(preload)]) as cluster, Client(cluster) as client:
        client.wait_for_workers(1, timeout=60)
        yield client


def test_workers_that_cannot_import_the_package_are_our_error(without_the_package, frame,
                                                               small_train, exported_bundle,
                                                               packed):
    with pytest.raises(ClusterError) as info:
        grid_search_on_dask(search(small_train.features), frame, groups=frame["music_id"],
                            client=without_the_package)
    assert_ours(info.value, "cannot import", "install mgsv-sk")
    with pytest.raises(ClusterError) as info:
        predict_dask(dd.from_pandas(frame[["video_id"]], npartitions=2), exported_bundle,
                     packed.path)
    assert_ours(info.value, "cannot import")


# -- stores moved or deleted between calls -----------------------------------------------------
@given(what=st.sampled_from(["moved", "deleted", "replaced-by-file", "meta-deleted"]))
def test_a_store_changed_between_calls_is_our_error(what, tiny_fitted, small_train, frame,
                                                    tmp_path_factory):
    root = tmp_path_factory.mktemp("moving")
    store = pack_features(small_train.features, root / "store", annotations=frame)
    model = pickle.loads(pickle.dumps(tiny_fitted))
    model.set_params(features=store.path)
    model.predict(frame.head(2))
    if what == "moved":
        shutil.move(store.path, root / "elsewhere")
    elif what == "deleted":
        shutil.rmtree(store.path)
    elif what == "replaced-by-file":
        shutil.rmtree(store.path)
        store.path.write_text("not a store")
    else:
        (store.path / "meta.json").unlink()
    reloaded = pickle.loads(pickle.dumps(model))  # a model pickled with its store's path
    for m in (model, reloaded):
        try:
            m.predict(frame.head(2))
        except MGSVError as exc:
            assert_ours(exc)
        except FileNotFoundError as exc:  # the store's memory map is gone
            raise AssertionError(f"a raw FileNotFoundError: {exc}") from exc
    if what == "moved":
        reloaded.set_params(features=str(root / "elsewhere"))
        assert len(reloaded.predict(frame.head(2))) == 2


def test_a_bundle_deleted_after_loading_keeps_answering(exported_bundle, tmp_path, small_train,
                                                        frame):
    copy = tmp_path / "bundle"
    shutil.copytree(exported_bundle, copy)
    runtime = OnnxGrounder.load(copy, 1, features=small_train.features)
    want = runtime.predict(frame.head(3))
    shutil.rmtree(copy)  # sessions and catalogue arrays were read at load
    pd.testing.assert_frame_equal(runtime.predict(frame.head(3)), want)
    with pytest.raises(MGSVError) as info:
        OnnxGrounder.load(copy)
    assert_ours(info.value, "no ONNX bundle")


# -- files replaced by folders, FIFOs, links ---------------------------------------------------
def _replace(path: Path, how: str) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    if how == "folder":
        path.mkdir()
    elif how == "fifo":
        os.mkfifo(path)
    elif how == "dangling-link":
        os.symlink(path.parent / "nowhere", path)
    elif how == "link-loop":
        os.symlink(path, path)


@given(how=st.sampled_from(["folder", "fifo", "dangling-link", "link-loop"]),
       target=st.sampled_from(["model-manifest", "model-weights", "bundle-manifest",
                               "bundle-graph", "store-meta", "store-data", "csv", "tree-pt"]))
def test_files_replaced_by_folders_fifos_or_links_are_our_error(how, target, tiny_fitted,
                                                                exported_bundle, small_train,
                                                                release_tree, tmp_path_factory):
    root = tmp_path_factory.mktemp("replaced")
    if target.startswith("model"):
        tiny_fitted.save(root / "m")
        path = root / "m" / ("manifest.json" if target == "model-manifest" else "weights.npz")
        call = lambda: MGSVGrounder.load(root / "m")  # noqa: E731
    elif target.startswith("bundle"):
        shutil.copytree(exported_bundle, root / "b")
        path = root / "b" / "manifest.json" if target == "bundle-manifest" else next(
            (root / "b").rglob("*.onnx"))
        call = lambda: OnnxGrounder.load(root / "b")  # noqa: E731
    elif target.startswith("store"):
        store = pack_features(small_train.features, root / "s",
                              annotations=small_train.frame.head(4))
        path = store.path / "meta.json" if target == "store-meta" else next(
            p for p in store.path.iterdir() if p.suffix in (".f32", ".npy", ".bin")
            or "data" in p.name)
        call = lambda: PackedFeatures(store.path).video(  # noqa: E731
            small_train.frame["video_id"].iloc[0])
    elif target == "csv":
        path = root / "a.csv"
        call = lambda: read_annotations(path)  # noqa: E731
    else:
        tree = root / "t"
        shutil.copytree(release_tree.root, tree, symlinks=True)
        path = next(tree.rglob("*.pt"))
        call = lambda: [FeatureTree(tree).video(v) for v in release_tree.frame["video_id"]] + [  # noqa: E731
            FeatureTree(tree).music(m) for m in release_tree.frame["music_id"]]
    _replace(path, how)
    with pytest.raises(MGSVError) as info:
        call()
    assert_ours(info.value)


def test_an_empty_store_folder_and_a_file_as_features_are_our_error(tiny_fitted, frame, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    for given_path in (tmp_path / "empty", tmp_path / "file", tmp_path / "none"):
        with pytest.raises(MGSVError) as info:
            tiny_fitted.predict(frame.head(2), features=str(given_path))
        assert_ours(info.value)
    assert np.isfinite(tiny_fitted.predict(frame.head(2))["start"]).all()
