"""Lifecycles (hypothesis stateful testing): an estimator and its ONNX runtime driven
through fit, set_catalogue, save, load, export, predict, rank and refit in random order,
with a failing step injected anywhere.

Invariants: a loaded or exported model answers as the one saved or exported; an error
leaves the previous state whole (the same answers, the same fitted attributes, the same
files); every loader given another kind of artefact, or another format version, names what
it was given. Bounded: a tiny model, few steps, few examples (the ``ci`` profile)."""

from __future__ import annotations

import copy
import json
import shutil
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
from _hostile import assert_ours
from conftest import TINY
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from mgsv_sk import MGSVGrounder
from mgsv_sk.errors import ArtifactKindError, MGSVError, NotFittedError
from mgsv_sk.export.runtime import OnnxGrounder
from mgsv_sk.export.to_onnx import export_onnx

# a generated test that runs past this has hung (the default, 900 s, is for example fits)
pytestmark = pytest.mark.timeout(300)

REFIT = {**TINY, "max_epochs": 1, "validation_fraction": 0.0}


def answers(model, frame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What a model says about ``frame``: SmG moments and the top-3 catalogue tracks."""
    return model.predict(frame), model.rank(frame, k=3)


def same(got, want, atol=0.0) -> None:
    for g, w in zip(got, want, strict=True):
        if atol:
            assert list(g["music_id"]) == list(w["music_id"])
            num = [c for c in g.columns if g[c].dtype.kind == "f"]
            np.testing.assert_allclose(g[num].to_numpy(), w[num].to_numpy(), atol=atol)
        else:
            pd.testing.assert_frame_equal(g, w)


def tree_state(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


class Lifecycle(RuleBasedStateMachine):
    """One estimator, its saved folder, its exported bundle and the runtime serving it."""

    fitted: MGSVGrounder
    data: object
    budget: dict[str, int]
    bundle: Path
    tmp: Path

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(self.tmp) / f"run{id(self)}"
        self.root.mkdir()
        self.model = copy.deepcopy(self.fitted)
        self.frame = self.data.frame.head(6).reset_index(drop=True)
        self.ref = answers(self.model, self.frame)
        self.saved: tuple[Path, tuple] | None = None
        self.exported: tuple[Path, tuple] | None = None
        self.runtime: OnnxGrounder | None = None

    @initialize(with_runtime=st.booleans())
    def start(self, with_runtime):
        if with_runtime:  # the session's bundle of the same fit
            bundle = self.root / "bundle0"
            shutil.copytree(self.bundle, bundle)
            self.exported = (bundle, self.ref)
            self.runtime = OnnxGrounder.load(bundle, 1, features=self.data.features)

    # -- steps that succeed -------------------------------------------------------------
    @rule()
    def predict_and_rank(self):
        same(answers(self.model, self.frame), self.ref)

    @rule(n=st.integers(2, 8))
    def set_catalogue(self, n):
        ids = self.data.frame["music_id"].drop_duplicates().tolist()[:n]
        self.model.set_catalogue(ids)
        assert self.model.catalogue_ids_ == ids
        self.ref = answers(self.model, self.frame)

    @rule(overwrite=st.booleans())
    def save(self, overwrite):
        path = self.root / "saved"
        if path.exists() and not overwrite:
            before = tree_state(path)
            with pytest.raises(FileExistsError):
                self.model.save(path)
            assert tree_state(path) == before
            return
        self.model.save(path, overwrite=overwrite)
        self.saved = (path, self.ref)

    @precondition(lambda self: self.saved is not None)
    @rule()
    def load(self):
        path, ref = self.saved
        self.model = MGSVGrounder.load(path, features=self.data.features)
        same(answers(self.model, self.frame), ref)
        self.ref = ref

    @precondition(lambda self: Lifecycle.budget["exports"] > 0)
    @rule()
    def export(self):
        Lifecycle.budget["exports"] -= 1
        bundle = self.root / "bundle1"
        if bundle.exists():
            shutil.rmtree(bundle)
        export_onnx(self.model, bundle)
        self.exported = (bundle, self.ref)
        self.runtime = OnnxGrounder.load(bundle, 1, features=self.data.features)

    @precondition(lambda self: self.runtime is not None)
    @invariant()
    def runtime_answers_as_exported(self):
        same(answers(self.runtime, self.frame), self.exported[1], atol=2e-3)

    @precondition(lambda self: Lifecycle.budget["refits"] > 0)
    @rule()
    def refit(self):
        Lifecycle.budget["refits"] -= 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model = MGSVGrounder(features=self.data.features, **REFIT).fit(
                self.data.frame.head(40))
        self.ref = answers(self.model, self.frame)

    # -- failing steps: each leaves the state whole -----------------------------------
    @rule(bad=st.sampled_from(["no-rows", "nan-time", "ghost-track", "bad-param"]))
    def fit_fails(self, bad):
        X = self.data.frame.head(12).copy()
        model = self.model
        if bad == "no-rows":
            X = X.iloc[:0]
        elif bad == "nan-time":
            X.loc[3, "music_end"] = np.nan
        elif bad == "ghost-track":
            X.loc[2, "music_id"] = "ghost"
        else:
            model.set_params(lr=-1.0)
        token = getattr(model, "fit_token_", None)
        try:
            with pytest.raises(MGSVError) as info:
                model.fit(X)
            assert_ours(info.value)
        finally:
            if bad == "bad-param":
                model.set_params(lr=TINY["lr"])  # REFIT's too
        assert getattr(model, "fit_token_", None) == token
        same(answers(model, self.frame), self.ref)

    @rule()
    def training_fails(self):
        """A failure inside training leaves the estimator unfitted (documented), never
        serving the earlier model as if it were the new one; a refit restores it."""
        model = copy.deepcopy(self.model)
        with mock.patch("mgsv_sk.estimators.made.fit_grounder",
                        side_effect=RuntimeError("out of memory")), \
                pytest.raises(RuntimeError):
            model.fit(self.data.frame.head(12))
        with pytest.raises(NotFittedError) as info:
            model.predict(self.frame)
        assert_ours(info.value)

    @rule(ids=st.sampled_from([["ghost"], [], ["../x"], [" "]]))
    def set_catalogue_fails(self, ids):
        before = list(self.model.catalogue_ids_)
        with pytest.raises(MGSVError) as info:
            self.model.set_catalogue(ids)
        assert_ours(info.value)
        assert self.model.catalogue_ids_ == before
        same(answers(self.model, self.frame), self.ref)

    @precondition(lambda self: self.runtime is not None)
    @rule(ids=st.sampled_from([["ghost"], ["../x"]]))
    def runtime_add_tracks_fails(self, ids):
        before = list(self.runtime.catalogue_ids_)
        with pytest.raises(MGSVError) as info:
            self.runtime.add_tracks(ids)
        assert_ours(info.value)
        assert list(self.runtime.catalogue_ids_) == before

    @rule(target_kind=st.sampled_from(["file", "bundle"]))
    def save_onto_something_else_fails(self, target_kind):
        if target_kind == "file":
            target = self.root / "a-file"
            target.write_text("keep me")
        elif self.exported is not None:
            target = self.exported[0]
        else:
            return
        before = tree_state(target) if target.is_dir() else target.read_bytes()
        with pytest.raises((MGSVError, FileExistsError, ValueError)):
            self.model.save(target, overwrite=True)
        assert (tree_state(target) if target.is_dir() else target.read_bytes()) == before

    @rule(kind=st.sampled_from(["bundle-as-model", "model-as-bundle", "old-model",
                                "old-bundle"]))
    def loaders_name_what_they_were_given(self, kind):
        if kind in ("bundle-as-model", "old-bundle") and self.exported is None:
            return
        if kind in ("model-as-bundle", "old-model") and self.saved is None:
            return
        if kind == "bundle-as-model":
            with pytest.raises(ArtifactKindError) as info:
                MGSVGrounder.load(self.exported[0])
            assert_ours(info.value, "an ONNX bundle", "OnnxGrounder.load")
        elif kind == "model-as-bundle":
            with pytest.raises(ArtifactKindError) as info:
                OnnxGrounder.load(self.saved[0])
            assert_ours(info.value, "a saved MGSVGrounder", "MGSVGrounder.load")
        else:
            source = self.saved[0] if kind == "old-model" else self.exported[0]
            old = self.root / f"{kind}-copy"
            shutil.rmtree(old, ignore_errors=True)
            shutil.copytree(source, old)
            manifest = json.loads((old / "manifest.json").read_text())
            manifest["format"] = manifest["format"].rsplit("/", 1)[0] + "/2"
            (old / "manifest.json").write_text(json.dumps(manifest))
            loader = MGSVGrounder.load if kind == "old-model" else OnnxGrounder.load
            with pytest.raises(ArtifactKindError) as info:
                loader(old)
            assert_ours(info.value, "/2'", "another version")

    @invariant()
    def the_model_is_fitted(self):
        assert hasattr(self.model, "fit_token_")


@pytest.fixture
def lifecycle(tiny_fitted, small_train, exported_bundle, tmp_path):
    Lifecycle.fitted, Lifecycle.data = tiny_fitted, small_train
    Lifecycle.bundle, Lifecycle.tmp = exported_bundle, tmp_path
    # the costly steps (an export: seconds; a refit: seconds) run a few times per test, in
    # whichever examples reach them first; every other step is cheap
    Lifecycle.budget = {"exports": 2, "refits": 2}
    return Lifecycle


def test_lifecycle(lifecycle):
    from hypothesis.stateful import run_state_machine_as_test

    budget = settings(settings.default, max_examples=settings.default.max_examples,
                      stateful_step_count=10)
    run_state_machine_as_test(lifecycle, settings=budget)


# -- every loader, given every other kind of artefact or another version ---------------------
@pytest.fixture(scope="module")
def artefacts(tiny_fitted, exported_bundle, small_train, release_tree, tmp_path_factory):
    import pickle
    import zipfile

    from mgsv_sk import pack_features

    root = tmp_path_factory.mktemp("kinds")
    tiny_fitted.save(root / "model")
    pack_features(small_train.features, root / "packed", annotations=small_train.frame.head(4))
    small_train.frame.head(3).to_csv(root / "a.csv", index=False)
    (root / "model.pkl").write_bytes(pickle.dumps({"a": 1}))
    with zipfile.ZipFile(root / "release.zip", "w") as z:
        z.writestr("x.txt", "x")
    kinds = {"model": root / "model", "bundle": Path(exported_bundle), "packed": root / "packed",
             "tree": Path(release_tree.root), "csv": root / "a.csv", "pickle": root / "model.pkl",
             "zip": root / "release.zip"}
    for kind, marker in (("model", "manifest.json"), ("bundle", "manifest.json"),
                         ("packed", "meta.json")):
        old = root / f"old-{kind}"
        shutil.copytree(kinds[kind], old)
        record = json.loads((old / marker).read_text())
        record["format"] = record["format"].rsplit("/", 1)[0] + "/0"
        (old / marker).write_text(json.dumps(record))
        kinds[f"old-{kind}"] = old
    return kinds


def _loaders():
    from mgsv_sk import FeatureTree, PackedFeatures

    return {"model": MGSVGrounder.load, "bundle": OnnxGrounder.load, "packed": PackedFeatures,
            "tree": FeatureTree}


SAYS = {"model": "a saved MGSVGrounder", "bundle": "an ONNX bundle",
        "packed": "a packed feature store", "tree": "an MGSV-EC feature tree", "csv": "CSV",
        "pickle": "pickle", "zip": "zip"}


@pytest.mark.parametrize("loader", ["model", "bundle", "packed", "tree"])
@pytest.mark.parametrize("given", ["model", "bundle", "packed", "tree", "csv", "pickle", "zip",
                                   "old-model", "old-bundle", "old-packed"])
def test_every_loader_names_what_it_was_given(loader, given, artefacts):
    if given == loader:
        _loaders()[loader](artefacts[given])
        return
    with pytest.raises(ArtifactKindError) as info:
        _loaders()[loader](artefacts[given])
    kind = given.removeprefix("old-")
    if given.startswith("old-") and kind == loader:
        assert_ours(info.value, "/0'", "another version")
    else:
        assert_ours(info.value, SAYS[kind])
