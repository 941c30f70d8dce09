"""Reliability and security (issue 5): every bad input through every entry point gets a
specific error (or a documented handling), faults never leave a half-written artefact that
loads, no code runs from data, and results are deterministic and thread-safe.

The cases are tables: each row is one case, its pytest id says which, and the test asserts
the exact error type and a fragment of the message (or the documented handling). The README
section "Reliability and security" lists the same cases.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.exceptions import NotFittedError

import mgsv_sk.export.runtime as runtime
from mgsv_sk import MGSVGrounder, get_scorer, pack_features
from mgsv_sk.data._schema import AnnotationError
from mgsv_sk.data.features import (
    FeatureError,
    FeatureTree,
    InMemoryFeatures,
    MissingFeatureError,
    PackedFeatures,
)
from mgsv_sk.data.spans import clamp_prediction, cw_to_se, se_to_cw, temporal_iou
from mgsv_sk.estimators._persistence import ModelFileError, sha256_file
from mgsv_sk.evaluation.metrics import (
    grounding_report_from_iou,
    moment_recall_report,
    retrieval_ranks,
    retrieval_report,
)
from mgsv_sk.export.manifest import BundleError
from mgsv_sk.export.to_onnx import export_onnx
from mgsv_sk.infer.device import torch_threads

ORTFeatureError = runtime.FeatureError
ONE_EPOCH = {**TINY, "max_epochs": 1}
PROPERTY = settings(max_examples=60, deadline=None, derandomize=True)  # seeded, repeatable


@pytest.fixture(scope="module")
def bundle(tiny_fitted, tmp_path_factory):
    return export_onnx(tiny_fitted, tmp_path_factory.mktemp("robust") / "bundle")


@pytest.fixture(scope="module")
def served(bundle, small_train):
    return runtime.OnnxGrounder.load(bundle, 1, features=small_train.features)


def leftovers(folder: Path) -> list[str]:
    """Temporary or displaced folders an atomic write could leave behind."""
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


# == 1. bad annotation frames ================================================================
# (id, how to break the frame, entry points that must refuse it, error type, message)
def _first(frame: pd.DataFrame, column: str, value: Any) -> pd.DataFrame:
    out = frame.copy()
    out[column] = out[column].astype(float if isinstance(value, float) else object)
    out.loc[out.index[0], column] = value
    return out


def _conflict(frame: pd.DataFrame) -> pd.DataFrame:
    twin = frame.iloc[:1].assign(music_start=frame["music_start"].iloc[0] + 1.0)
    return pd.concat([frame, twin])


ALL = ("fit", "predict", "rank", "decision_function", "scorer")
GT = ("fit", "scorer")  # entry points that need the ground truth columns
FRAME_CASES: list[tuple[str, Callable[[pd.DataFrame], Any], tuple[str, ...], type, str]] = [
    ("not-a-frame", lambda f: f.to_numpy(), ALL, TypeError, "expected a pandas DataFrame"),
    ("empty-frame", lambda f: f.iloc[:0], ALL, AnnotationError, "the frame has no rows"),
    ("missing-video_id", lambda f: f.drop(columns="video_id"), ALL, AnnotationError,
     "missing column 'video_id'"),
    ("missing-music_end", lambda f: f.drop(columns="music_end"), GT, AnnotationError,
     r"missing column 'music_end'$"),
    ("misspelt-music_end", lambda f: f.rename(columns={"music_end": "music_ned"}), GT,
     AnnotationError, r"missing column 'music_end' \(found 'music_ned': misspelt\?\)"),
    ("empty-id", lambda f: _first(f, "video_id", None), ALL, AnnotationError,
     r"'video_id' has 1 empty value\(s\) \(rows 0\)"),
    ("fractional-id", lambda f: f.assign(video_id=np.arange(len(f)) + 0.5), ALL,
     AnnotationError, "holds fractional numbers; ids must be strings"),
    ("text-time", lambda f: _first(f, "music_start", "ten"), ALL, AnnotationError,
     r"'music_start' has non-numeric values \(rows 0\)"),
    ("nan-time", lambda f: _first(f, "music_end", np.nan), ALL, AnnotationError,
     r"'music_end' has 1 NaN/inf value\(s\) \(rows 0\)"),
    ("inf-time", lambda f: _first(f, "music_total_duration", np.inf), ALL, AnnotationError,
     r"'music_total_duration' has 1 NaN/inf"),
    ("negative-time", lambda f: _first(f, "music_start", -2.0), ALL, AnnotationError,
     r"'music_start' has 1 negative time\(s\)"),
    ("inverted-span", lambda f: f.assign(music_end=f["music_start"]), ALL, AnnotationError,
     "music_end <= music_start"),
    ("moment-past-track", lambda f: f.assign(music_end=f["music_total_duration"] + 5), ALL,
     AnnotationError, r"end after their track \(music_end > music_total_duration"),
    # (a prediction answers every row: one video asked about two tracks is no conflict)
    ("conflicting-duplicate", _conflict,
     tuple(e for e in ALL if e not in ("predict", "rank", "decision_function")), AnnotationError,
     "appear in several rows that disagree"),
    ("moment-starts-past-240s",
     lambda f: f.assign(music_total_duration=300.0, music_start=245.0, music_end=260.0),
     ("fit",), AnnotationError, r"start at or after 240 s \(rows 0, .*\), past the music"),
]


def _entry(name: str, est: MGSVGrounder, features: Any) -> Callable[[Any], Any]:
    return {
        "fit": lambda X: MGSVGrounder(features=features, **ONE_EPOCH).fit(X),
        "predict": est.predict,
        "rank": lambda X: est.rank(X, k=3),
        "decision_function": est.decision_function,
        "scorer": lambda X: get_scorer("miou")(est, X),
    }[name]


@pytest.mark.parametrize(
    "case, entry",
    [pytest.param(c, e, id=f"{e}-{c[0]}") for c in FRAME_CASES for e in c[2]],
)
def test_bad_frames_are_refused_by_every_entry_point(case, entry, tiny_fitted, small_train):
    _, mutate, _, error, message = case
    X = mutate(small_train.frame.iloc[:12].copy())
    with pytest.raises(error, match=message):
        _entry(entry, tiny_fitted, small_train.features)(X)


@pytest.mark.parametrize("mutate, error, message", [
    (lambda f: f.to_dict(), TypeError, "expected a pandas DataFrame"),
    (lambda f: f.iloc[:0], ValueError, "the frame has no rows"),
    (lambda f: f.rename(columns={"video_id": "vid_id"}), ValueError,
     r"missing column 'video_id' \(found 'vid_id': misspelt\?\)"),
    (lambda f: _first(f, "music_id", None), ValueError,
     r"'music_id' has 1 empty value\(s\) \(rows 0\)"),
], ids=["not-a-frame", "empty-frame", "misspelt-video_id", "empty-id"])
@pytest.mark.parametrize("call", ["predict", "rank", "decision_function"])
def test_runtime_refuses_bad_frames(served, small_train, mutate, error, message, call):
    X = mutate(small_train.frame.iloc[:4].copy())
    with pytest.raises(error, match=message):
        getattr(served, call)(X)


def _file(tmp_path: Path) -> Path:
    (tmp_path / "a_file").write_text("not a folder")
    return tmp_path / "a_file"


# (id, call(fitted estimator, bundle, data, tmp_path), error type, message)
ARGUMENT_CASES: list[tuple[str, Callable[..., Any], type, str]] = [
    ("pack-missing-music_id", lambda e, b, d, t: pack_features(
        d.features, t / "p", annotations=d.frame.drop(columns="music_id")), AnnotationError,
     "annotations failed validation (?s:.*)missing column 'music_id'"),
    ("pack-not-a-frame", lambda e, b, d, t: pack_features(
        d.features, t / "p", annotations=d.frame.to_numpy()), TypeError,
     "annotations: expected a pandas DataFrame"),
    ("pack-unknown-id", lambda e, b, d, t: pack_features(
        d.features, t / "p", video_ids=["ghost"], music_ids=[]), FeatureError,
     r"no features for 1 video\(s\) \['ghost'\]"),
    ("pack-onto-a-file", lambda e, b, d, t: pack_features(
        d.features, _file(t), annotations=d.frame, overwrite=True), FileExistsError,
     "is a file, not a folder"),
    ("export-unfitted", lambda e, b, d, t: export_onnx(MGSVGrounder(), t / "b"), ValueError,
     "export_onnx needs a fitted MGSVGrounder"),
    ("export-bad-opset", lambda e, b, d, t: export_onnx(e, t / "b", opset=21), ValueError,
     r"opset must be an int in \[17, 20\]"),
    ("export-exists", lambda e, b, d, t: export_onnx(e, b), FileExistsError,
     "already exists; pass overwrite=True"),
    ("save-exists", lambda e, b, d, t: e.save(b), FileExistsError,
     "already exists; pass overwrite=True"),
    ("load-no-model", lambda e, b, d, t: MGSVGrounder.load(t), FileNotFoundError,
     r"no saved MGSVGrounder at .*manifest\.json missing"),
    ("runtime-no-bundle", lambda e, b, d, t: runtime.OnnxGrounder.load(t / "none"),
     FileNotFoundError, "no ONNX bundle at .*the folder does not exist"),
    ("runtime-no-int8", lambda e, b, d, t: runtime.OnnxGrounder.load(b, precision="int8"),
     ValueError, r"has no 'int8' graphs .*export with quantize=True"),
    ("runtime-no-features", lambda e, b, d, t: runtime.OnnxGrounder.load(b).predict(d.frame),
     ValueError, "no features given: pass features="),
    ("runtime-rank-k0", lambda e, b, d, t: runtime.OnnxGrounder.load(b).rank(d.frame, k=0),
     ValueError, "k must be a positive integer, got 0"),
    ("rank-k0", lambda e, b, d, t: e.rank(d.frame, k=0), ValueError,
     "k must be a positive integer, got 0"),
    ("unfitted-predict", lambda e, b, d, t: MGSVGrounder().predict(d.frame), NotFittedError,
     "is not fitted yet"),
    ("unknown-scorer", lambda e, b, d, t: get_scorer("mIoU"), ValueError,
     r"unknown scorer name\(s\) \['mIoU'\]; valid names are: miou"),
    ("iou-nan", lambda e, b, d, t: temporal_iou([[0, np.nan]], [[0, 1]], 10), ValueError,
     r"pred holds NaN or inf values in 1 row\(s\)"),
    ("iou-shape", lambda e, b, d, t: temporal_iou([0, 1], [[0, 1]], 10), ValueError,
     r"pred must have shape \(n, 2\)"),
    ("ranks-nan", lambda e, b, d, t: retrieval_ranks([[np.nan, 1.0]], ["a", "b"], ["a"]),
     ValueError, "scores holds NaN in 1 row"),
    ("ranks-unknown-truth", lambda e, b, d, t: retrieval_ranks([[0.0, 1.0]], ["a", "b"], ["z"]),
     ValueError, "gallery must hold every query's true track"),
    ("report-empty", lambda e, b, d, t: grounding_report_from_iou([]), ValueError,
     "ious is empty"),
]


@pytest.mark.parametrize("call, error, message", [c[1:] for c in ARGUMENT_CASES],
                         ids=[c[0] for c in ARGUMENT_CASES])
def test_bad_arguments_fail_clearly(call, error, message, tiny_fitted, bundle, small_train,
                                    tmp_path):
    with pytest.raises(error, match=message):
        call(tiny_fitted, bundle, small_train, tmp_path)
    assert leftovers(tmp_path) == []


def test_extra_columns_are_ignored(tiny_fitted, served, small_train):
    X = small_train.frame.iloc[:6]
    extra = X.assign(my_notes="x", another=1.5)
    pd.testing.assert_frame_equal(tiny_fitted.predict(extra), tiny_fitted.predict(X))
    pd.testing.assert_frame_equal(served.predict(extra), served.predict(X))


def test_moments_ending_past_240s_are_cut_with_a_warning(small_train):
    X = small_train.frame.iloc[:40].copy()
    X["music_total_duration"] = 300.0  # a track longer than 240 s is fine ...
    X.loc[X.index[:3], ["music_start", "music_end"]] = [[230.0, 262.0]] * 3  # ... cut here
    src = small_train.features  # whose tracks have features up to 240 s (96 snippets)
    feats = InMemoryFeatures({v: src.video(v) for v in X["video_id"]},
                             {m: np.resize(src.music(m), (96, 768)) for m in X["music_id"]})
    with pytest.warns(UserWarning, match=r"3 moment\(s\) end after 240 s .* as ending at 240 s"):
        est = MGSVGrounder(features=feats, **ONE_EPOCH).fit(X)
    assert np.isfinite(est.predict(X)[["start", "end", "score"]].to_numpy()).all()


def test_evaluation_cuts_ground_truth_at_240s_as_the_protocol():
    # documented handling: the truth ends at min(end, 240); a moment starting past 240 s
    # scores IoU 0, never NaN
    iou = temporal_iou([[230, 240], [250, 260]], [[230, 262], [245, 260]], [300, 300])
    np.testing.assert_allclose(iou, [1.0, 0.0])


# == 2. bad features ========================================================================
GOOD_V, GOOD_M = np.ones((6, 512), np.float32), np.ones((20, 768), np.float32)
# (id, modality, bad array, message: one feature check serves both backends)
FEATURE_CASES = [
    ("nan-frame", "video", np.where(np.arange(512) == 7, np.nan, GOOD_V), "contains NaN or inf"),
    ("inf-snippet", "music", np.where(np.arange(768) == 7, np.inf, GOOD_M),
     "contains NaN or inf"),
    ("zero-frames", "video", np.zeros((0, 512), np.float32), "has no valid rows"),
    ("dim-511", "video", np.ones((6, 511), np.float32), r"shape \(6, 511\), expected \(T, 512\)"),
    ("dim-767", "music", np.ones((6, 767), np.float32), r"shape \(6, 767\), expected \(T, 768\)"),
    ("batch-of-two", "video", np.ones((2, 6, 512), np.float32), r"shape \(2, 6, 512\)"),
    ("text-dtype", "video", np.full((6, 512), "a"), "dtype <U1, expected real numbers"),
    ("video-over-50s", "video", np.ones((60, 512), np.float32),
     "has 60 frames, more than the 50 .* trim the video to 50 s"),
]


def _sources(data: Any, kind: str, bad: np.ndarray) -> tuple[dict, dict]:
    """The split's features as dicts, the first test row's video or track replaced."""
    videos = {v: data.features.video(v) for v in data.frame["video_id"]}
    music = {m: data.features.music(m) for m in data.frame["music_id"]}
    row = data.frame.iloc[0]
    (videos if kind == "video" else music)[row["video_id" if kind == "video" else "music_id"]] = bad
    return videos, music


@pytest.mark.parametrize("case", FEATURE_CASES, ids=[c[0] for c in FEATURE_CASES])
def test_bad_features_are_refused(case, tiny_fitted, served, small_test):
    _, kind, bad, message = case
    videos, music = _sources(small_test, kind, bad)
    X = small_test.frame.iloc[:3]  # SmG on tracks outside the catalogue: both modalities read
    with pytest.raises(FeatureError, match=message):
        InMemoryFeatures(videos, music)
    with pytest.raises(FeatureError, match=message):
        tiny_fitted.predict(X, features=(videos, music))
    with pytest.raises(ORTFeatureError, match=message):
        served.predict(X, features=(videos, music))


@pytest.mark.parametrize("kind", ["video", "music"])
def test_all_padding_masks_are_refused(kind):
    masks = {"x": np.zeros(6)}
    with pytest.raises(FeatureError, match="id 'x' has no valid rows; every item needs"):
        InMemoryFeatures({"x": GOOD_V} if kind == "video" else {},
                         {"x": GOOD_M[:6]} if kind == "music" else {},
                         **{f"{kind}_masks": masks})


def test_model_refuses_an_all_padding_mask(tiny_fitted):
    video, mask = torch.ones(2, 4, 512), torch.zeros(2, 4, dtype=torch.bool)
    mask[0, :2] = True
    with pytest.raises(ValueError, match=r"rows \[1\] are all padding"):
        tiny_fitted.model_.encode_video(video, mask)


def test_tracks_over_240s_are_cut_with_a_warning(tiny_fitted, served, small_test):
    X = small_test.frame.iloc[:3]
    track = X["music_id"].iloc[0]
    long = np.concatenate([small_test.features.music(track),
                           np.ones((120, 768), np.float32)])  # > 96 snippets
    videos, music = _sources(small_test, "music", long)
    cut = (videos, {**music, track: long[:96]})
    want, want_ort = tiny_fitted.predict(X, features=cut), served.predict(X, features=cut)
    for predict, expected in ((tiny_fitted.predict, want), (served.predict, want_ort)):
        with pytest.warns(UserWarning, match=r"more than 96 snippets \(240 s\).*cut at 240 s"):
            got = predict(X, features=(videos, music))
        pd.testing.assert_frame_equal(got, expected)


@pytest.mark.parametrize("kind", ["video", "music"])
def test_extreme_values_never_give_nan(kind, tiny_fitted, served, small_test):
    # finite but overflowing float32 arithmetic: refused by name, never NaN in a result
    videos, music = _sources(small_test, kind, np.full((6, 768 if kind == "music" else 512),
                                                       3e38, np.float32))
    bad_id = small_test.frame.iloc[0]["video_id" if kind == "video" else "music_id"]
    X = small_test.frame.iloc[:3]
    message = (rf"features of 1 {'video' if kind == 'video' else 'track'}\(s\) "
               rf"\['{re.escape(bad_id)}'\] give non-finite model outputs")
    with pytest.raises(FeatureError, match=message):
        tiny_fitted.predict(X, features=(videos, music))
    with pytest.raises(ORTFeatureError, match=message):
        served.predict(X, features=(videos, music))
    if kind == "music":  # a poisoned track never enters a catalogue
        est, before = copy.deepcopy(tiny_fitted), list(tiny_fitted.catalogue_ids_)
        with pytest.raises(FeatureError, match=message):
            est.set_catalogue(X["music_id"], features=(videos, music))
        assert est.catalogue_ids_ == before
        with pytest.raises(ORTFeatureError, match=message):
            served.add_tracks(X["music_id"], features=(videos, music))
        assert served.catalogue_ids_ == before


def test_unknown_ids(tiny_fitted, served, small_train):
    X = small_train.frame.iloc[:3]
    ghost_video = X.assign(video_id=["ghost", *X["video_id"].iloc[1:]])
    ghost_track = X.assign(music_id=["ghost", *X["music_id"].iloc[1:]])
    for call in (tiny_fitted.predict, tiny_fitted.decision_function,
                 lambda f: tiny_fitted.rank(f, k=2)):
        with pytest.raises(FeatureError, match=r"no features for 1 video\(s\) \['ghost'\]"):
            call(ghost_video)
    for call in (served.predict, served.decision_function, lambda f: served.rank(f, k=2)):
        with pytest.raises(ORTFeatureError, match=r"no features for 1 video\(s\) \['ghost'\]"):
            call(ghost_video)
    with pytest.raises(FeatureError, match=r"no features for 1 track\(s\) \['ghost'\]"):
        tiny_fitted.predict(ghost_track)
    with pytest.raises(FeatureError, match=r"no features for 1 track\(s\) \['ghost'\]"):
        tiny_fitted.decision_function(X, music_ids=["ghost"])
    with pytest.raises(FeatureError, match=r"no features for 1 track\(s\) \['ghost'\]"):
        copy.deepcopy(tiny_fitted).set_catalogue(["ghost"])
    with pytest.raises(ORTFeatureError, match=r"no features for 1 track\(s\) \['ghost'\]"):
        served.predict(ghost_track)
    with pytest.raises(ORTFeatureError, match=r"no features for 1 track\(s\) \['ghost'\]"):
        served.decision_function(X, music_ids=["ghost"])
    # documented: rank searches the catalogue, so X's music_id column is not used
    pd.testing.assert_frame_equal(tiny_fitted.rank(ghost_track, k=2), tiny_fitted.rank(X, k=2))
    pd.testing.assert_frame_equal(served.rank(ghost_track, k=2), served.rank(X, k=2))


# -- .pt files of the release tree ----------------------------------------------------------
class _Payload:
    """Pickles to a call of os.system: loading it without weights_only would run it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _break_pt(path: Path, how: str, marker: Path) -> None:
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "not-a-tensor":
        torch.save({"feature": torch.ones(3)}, path)
    elif how == "code-payload":
        torch.save(_Payload(marker), path)
    elif how == "all-padding-mask":
        mask = path.parents[1] / "vit_mask" / path.name
        torch.save(torch.zeros_like(torch.load(mask, weights_only=True)), mask)


PT_CASES = [
    ("missing", MissingFeatureError, r"video features file for video_id '{id}' not found"),
    ("truncated", FeatureError, r"cannot read video features for video_id '{id}' .*"
                                r"corrupt, truncated"),
    ("empty", FeatureError, r"cannot read video features .*corrupt, truncated"),
    ("not-a-tensor", FeatureError, "holds a dict, expected a tensor"),
    ("code-payload", FeatureError, r"refused to load video features for video_id '{id}' from "
                                   r".*{id}\.pt: the file holds pickled Python objects .*"
                                   "nothing was executed"),
    ("all-padding-mask", FeatureError, r"{id}\.pt has no valid rows"),
]


@pytest.mark.parametrize("how, error, message", PT_CASES, ids=[c[0] for c in PT_CASES])
def test_bad_pt_files_are_refused(how, error, message, release_tree, tiny_fitted, tmp_path):
    root = tmp_path / "tree"
    shutil.copytree(release_tree.root, root)
    vid = release_tree.frame["video_id"].iloc[0]
    marker = tmp_path / "PAYLOAD_RAN"
    _break_pt(root / "features/Kuai_feature/vit_feature1/vit_feature" / f"{vid}.pt", how, marker)
    message = message.format(id=vid)
    tree = FeatureTree(root)
    with pytest.raises(error, match=message):
        tree.video(vid)
    X = release_tree.frame.iloc[:2]
    with pytest.raises(FeatureError, match=vid):
        pack_features(tree, tmp_path / "packed", annotations=X)
    assert not (tmp_path / "packed").exists() and leftovers(tmp_path) == []
    with pytest.raises(FeatureError, match=vid):
        tiny_fitted.predict(X, features=root)
    assert not marker.exists()  # the payload never ran


# == 3. faults: interrupted fit, crashes while writing, corruption ============================
class _FailingReads(InMemoryFeatures):
    """Raises ``error`` on the n-th video read of the training epochs (a disk dying
    mid-epoch, or Ctrl-C); the reads of the fit's preparation are not counted (see
    :func:`_count_training_reads`)."""

    def __init__(self, data: Any, after: int, error: BaseException) -> None:
        ids = data.frame
        super().__init__({v: data.features.video(v) for v in ids["video_id"]},
                         {m: data.features.music(m) for m in ids["music_id"].unique()})
        self.reads, self.after, self.error = 0, after, error
        self.counting = True

    def video(self, video_id: str) -> np.ndarray:
        self.reads += self.counting
        if self.counting and self.reads == self.after:
            raise self.error
        return super().video(video_id)


@pytest.fixture
def _count_training_reads(monkeypatch):
    """The fit reads every training video once before training (the input moments); a
    :class:`_FailingReads` does not count those reads, so its n-th read is in an epoch."""
    from mgsv_sk.train import fitting

    real = fitting.feature_moments

    def uncounted(source: Any, *args: Any) -> Any:
        source.counting = False
        try:
            return real(source, *args)
        finally:
            source.counting = True

    monkeypatch.setattr(fitting, "feature_moments", uncounted)


@pytest.mark.parametrize("error", [RuntimeError("disk died"), KeyboardInterrupt()],
                         ids=["exception", "ctrl-c"])
@pytest.mark.parametrize("refit", [False, True], ids=["fresh", "refit"])
def test_a_fit_that_dies_in_its_first_epoch_leaves_the_estimator_unfitted(
        error, refit, tiny_fitted, small_train, _count_training_reads):
    est = copy.deepcopy(tiny_fitted) if refit else MGSVGrounder(**ONE_EPOCH)
    # in-memory lengths need no read: the 30th read is inside the first epoch's batches
    source = _FailingReads(small_train, after=30, error=error)
    with pytest.raises(type(error)):
        est.set_params(features=source).fit(small_train.frame)
    with pytest.raises(NotFittedError):  # never the earlier fit's model posing as this one
        est.predict(small_train.frame.iloc[:2])
    with pytest.raises(NotFittedError):
        est.save(Path("never-written"))


def test_a_fit_interrupted_after_an_epoch_keeps_the_best_weights(small_train,
                                                                 _count_training_reads):
    # about 120 reads per epoch (in-memory lengths need none): Ctrl-C inside epoch 2
    source = _FailingReads(small_train, after=180, error=KeyboardInterrupt())
    est = MGSVGrounder(features=source, **{**TINY, "max_epochs": 4, "validation_fraction": 0})
    with pytest.warns(RuntimeWarning, match=r"interrupted: the model holds the best weights"):
        est.fit(small_train.frame)
    assert est.stopped_ == "interrupted" and est.n_epochs_ == 1
    out = est.set_params(features=small_train.features).predict(small_train.frame.iloc[:5])
    assert np.isfinite(out[["start", "end", "score", "moment_score"]].to_numpy()).all()


def _crash(monkeypatch: pytest.MonkeyPatch, module: Any, name: str,
           error: BaseException) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(module, name, boom)


def _save(est: Any, dst: Path, data: Any, overwrite: bool) -> None:
    est.save(dst, overwrite=overwrite)


def _pack(est: Any, dst: Path, data: Any, overwrite: bool) -> None:
    pack_features(data.features, dst, annotations=data.frame.iloc[:10], overwrite=overwrite)


def _export(est: Any, dst: Path, data: Any, overwrite: bool) -> None:
    export_onnx(est, dst, overwrite=overwrite, check=False)


def _loads(kind: str, dst: Path, data: Any) -> Any:
    if kind == "save":
        return MGSVGrounder.load(dst, features=data.features).predict(data.frame.iloc[:3])
    if kind == "pack":
        return PackedFeatures(dst).video(data.frame["video_id"].iloc[0])
    return runtime.OnnxGrounder.load(dst, features=data.features).predict(data.frame.iloc[:3])


# (writer, module and function that dies mid-write: after some files are already written)
CRASHES = [
    ("save", _save, "mgsv_sk.estimators._persistence", "file_checksums"),  # after config + weights
    ("pack", _pack, "mgsv_sk.data.packed", "np.save"),  # after video_features.f32
    ("export", _export, "mgsv_sk.export.to_onnx", "_write_catalogue"),  # after every graph
]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()],
                         ids=["error", "ctrl-c"])
@pytest.mark.parametrize("previous", [False, True], ids=["new", "overwrite"])
@pytest.mark.parametrize("kind, write, module, function", CRASHES, ids=[c[0] for c in CRASHES])
def test_a_crash_while_writing_leaves_nothing_that_loads(
        kind, write, module, function, previous, error, tiny_fitted, small_train, tmp_path,
        monkeypatch):
    import importlib

    dst = tmp_path / "artefact"
    if previous:
        write(tiny_fitted, dst, small_train, False)
        before = _loads(kind, dst, small_train)
    target = importlib.import_module(module)
    if function == "np.save":
        monkeypatch.setattr(target.np, "save", lambda *a, **k: (_ for _ in ()).throw(error))
    else:
        _crash(monkeypatch, target, function, error)
    with pytest.raises(type(error)):
        write(tiny_fitted, dst, small_train, True)
    monkeypatch.undo()
    assert leftovers(tmp_path) == []
    if previous:  # the previous artefact is intact and still loads
        after = _loads(kind, dst, small_train)
        if isinstance(before, pd.DataFrame):
            pd.testing.assert_frame_equal(after, before)
        else:
            np.testing.assert_array_equal(after, before)
    else:
        assert not dst.exists()


@pytest.fixture(scope="module")
def saved(tiny_fitted, tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "model"
    tiny_fitted.save(path)
    return path


def _damage(path: Path, how: str) -> None:
    if how == "flip-a-byte":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    elif how == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "delete":
        path.unlink()


MODEL_DAMAGE = [
    ("weights.npz", "flip-a-byte", r"checksum mismatch for .*weights\.npz: .* refusing"),
    ("catalogue.npz", "flip-a-byte", r"checksum mismatch for .*catalogue\.npz"),
    ("config.json", "flip-a-byte", r"checksum mismatch for .*config\.json"),
    ("weights.npz", "truncate", r"weights\.npz has \d+ bytes, the manifest says \d+"),
    ("catalogue.npz", "delete", r"lacks catalogue\.npz, listed in its manifest; save the model"),
    ("manifest.json", "truncate", r"manifest\.json is corrupt"),
]


@pytest.mark.parametrize("name, how, message", MODEL_DAMAGE,
                         ids=[f"{n}-{h}" for n, h, _ in MODEL_DAMAGE])
def test_a_damaged_saved_model_is_refused(saved, tmp_path, name, how, message):
    copy_ = tmp_path / "model"
    shutil.copytree(saved, copy_)
    _damage(copy_ / name, how)
    with pytest.raises(ModelFileError, match=message):
        MGSVGrounder.load(copy_)


def test_weights_that_do_not_fit_the_config_are_refused(saved, tmp_path):
    copy_ = tmp_path / "model"
    shutil.copytree(saved, copy_)
    config = json.loads((copy_ / "config.json").read_text())
    config["params"]["d_model"] = 64  # consistent checksums, inconsistent content
    (copy_ / "config.json").write_text(json.dumps(config))
    manifest = json.loads((copy_ / "manifest.json").read_text())
    manifest["files"]["config.json"] = {"bytes": (copy_ / "config.json").stat().st_size,
                                        "sha256": sha256_file(copy_ / "config.json")}
    (copy_ / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFileError, match=r"weights in .*weights\.npz do not fit the model"):
        MGSVGrounder.load(copy_)


def test_a_model_saved_with_the_older_checksum_record_still_loads(saved, tmp_path):
    # before the record shared with bundles, a saved model listed bare sha256 values
    copy_ = tmp_path / "model"
    shutil.copytree(saved, copy_)
    manifest = json.loads((copy_ / "manifest.json").read_text())
    sums = {name: info["sha256"] for name, info in manifest.pop("files").items()}
    (copy_ / "manifest.json").write_text(json.dumps({**manifest, "sha256": sums}))
    assert MGSVGrounder.load(copy_).catalogue_.ids == MGSVGrounder.load(saved).catalogue_.ids
    _damage(copy_ / "weights.npz", "flip-a-byte")
    with pytest.raises(ModelFileError, match=r"checksum mismatch for .*weights\.npz"):
        MGSVGrounder.load(copy_)


BUNDLE_DAMAGE = [
    ("graphs/detector.onnx", "flip-a-byte", r"checksum mismatch for .*detector\.onnx"),
    ("catalogue/tokens.npy", "flip-a-byte", r"checksum mismatch for .*tokens\.npy"),
    ("catalogue/ids.json", "flip-a-byte", r"checksum mismatch for .*ids\.json"),
    ("graphs/video_encoder.onnx", "truncate", r"video_encoder\.onnx has \d+ bytes, the manifest"),
    ("catalogue/emb.npy", "delete", r"lacks catalogue/emb\.npy, listed in its manifest"),
]


@pytest.mark.parametrize("name, how, message", BUNDLE_DAMAGE,
                         ids=[f"{n.split('/')[-1]}-{h}" for n, h, _ in BUNDLE_DAMAGE])
def test_a_damaged_bundle_is_refused(bundle, tmp_path, name, how, message):
    copy_ = tmp_path / "bundle"
    shutil.copytree(bundle, copy_)
    _damage(copy_ / name, how)
    with pytest.raises(BundleError, match=message):
        runtime.OnnxGrounder.load(copy_)


@pytest.mark.parametrize("path, message", [
    ("../outside.npy", "lists file\\(s\\) outside the bundle"),
    ("graphs/unlisted.onnx", "uses file\\(s\\) it gives no checksum for"),
], ids=["path-outside", "unverified-graph"])
def test_a_manifest_cannot_point_elsewhere(bundle, tmp_path, path, message):
    copy_ = tmp_path / "bundle"
    shutil.copytree(bundle, copy_)
    manifest = json.loads((copy_ / "manifest.json").read_text())
    if path.startswith(".."):
        manifest["files"][path] = {"bytes": 0, "sha256": ""}
    else:
        manifest["graphs"]["detector"]["files"]["fp32"] = path
    (copy_ / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        runtime.OnnxGrounder.load(copy_)


# == 4. no code execution from data ==========================================================
def test_saved_models_and_bundles_hold_no_pickle(saved, bundle):
    import onnx

    for folder in (saved, bundle):
        for path in (p for p in folder.rglob("*") if p.is_file()):
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as loaded:  # raises on a pickle
                    assert all(loaded[k].dtype != object for k in loaded.files), path
            elif path.suffix == ".npy":
                assert np.load(path, allow_pickle=False).dtype != object, path
            elif path.suffix == ".onnx":
                onnx.load(path)  # protobuf, not pickle
            else:
                pytest.fail(f"unexpected file type in an artefact: {path}")


def test_pickles_are_documented_as_trusted_source_only():
    assert "trusted sources only" in " ".join(MGSVGrounder.__doc__.split())


# == 5. determinism and concurrency ===========================================================
def test_same_random_state_same_results_other_state_other_results(small_train):
    X = small_train.frame
    fits = [MGSVGrounder(features=small_train.features, **{**ONE_EPOCH, "random_state": s}
                         ).fit(X).predict(X) for s in (7, 7, 8)]
    pd.testing.assert_frame_equal(fits[0], fits[1])
    assert not np.array_equal(fits[0]["start"], fits[2]["start"])


def _hammer(call: Callable[[int], Any], n: int) -> list[Any]:
    """Run call(i) for i < n in n threads released at once; re-raise any error."""
    results: list[Any] = [None] * n
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def work(i: int) -> None:
        try:
            barrier.wait()
            results[i] = call(i)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def _same(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    numeric = a.select_dtypes("number").columns
    return (a.index.equals(b.index) and list(a.columns) == list(b.columns)
            and a.drop(columns=numeric).equals(b.drop(columns=numeric))
            and all(np.array_equal(a[c].to_numpy(), b[c].to_numpy()) for c in numeric))


@pytest.mark.parametrize("n_threads", [1, None], ids=["n_threads=1", "n_threads=None"])
def test_eight_threads_predicting_give_the_serial_results(tiny_fitted, small_train, n_threads):
    est = copy.deepcopy(tiny_fitted).set_params(n_threads=n_threads)
    frames = [small_train.frame.iloc[i * 5: i * 5 + 5] for i in range(8)]
    frames = [f if i % 2 else f.drop(columns="music_id") for i, f in enumerate(frames)]  # SmG/MsG
    threads_before = torch.get_num_threads()
    serial = [est.predict(f) for f in frames]
    parallel = _hammer(lambda i: est.predict(frames[i]), 8)
    assert all(_same(got, want) for got, want in zip(parallel, serial))
    assert torch.get_num_threads() == threads_before  # the global count is restored


def test_eight_threads_on_the_runtime_give_the_serial_results(served, small_train):
    frames = [small_train.frame.iloc[i * 9: i * 9 + 9] for i in range(8)]
    calls = [(lambda f: served.predict(f)) if i % 2 else (lambda f: served.rank(f, k=3))
             for i in range(8)]
    serial = [calls[i](frames[i]) for i in range(8)]
    parallel = _hammer(lambda i: calls[i](frames[i]), 8)
    assert all(_same(got, want) for got, want in zip(parallel, serial))


def test_torch_threads_restores_the_count_when_calls_interleave():
    before = torch.get_num_threads()
    first, second = torch_threads(1), torch_threads(1)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # leaves before the second: must not restore yet
    assert torch.get_num_threads() == 1
    second.__exit__(None, None, None)
    assert torch.get_num_threads() == before


# == 6. properties of the metrics and the span geometry (hypothesis) ==========================
seconds = st.floats(0.0, 300.0, allow_nan=False, allow_infinity=False)


@st.composite
def span_rows(draw: Any, n: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = n or draw(st.integers(1, 20))
    pred = draw(arrays(np.float64, (n, 2), elements=st.floats(-50, 320)))
    start = draw(arrays(np.float64, n, elements=seconds))
    length = draw(arrays(np.float64, n, elements=st.floats(0.5, 60)))
    duration = draw(arrays(np.float64, n, elements=st.floats(1, 300)))
    gt = np.column_stack([start, start + length])
    return pred, gt, np.maximum(duration, gt[:, 1])


@PROPERTY
@given(span_rows())
def test_iou_is_a_finite_fraction_and_row_wise(rows):
    pred, gt, duration = rows
    iou = temporal_iou(pred, gt, duration)
    assert iou.shape == (len(pred),) and np.isfinite(iou).all()
    assert ((iou >= 0) & (iou <= 1 + 1e-12)).all()
    order = np.arange(len(pred))[::-1]
    np.testing.assert_array_equal(temporal_iou(pred[order], gt[order], duration[order]),
                                  iou[order])


@PROPERTY
@given(span_rows())
def test_iou_of_a_moment_with_itself_is_one_and_iou_is_symmetric(rows):
    _, gt, duration = rows
    inside = gt[:, 1] <= 240.0
    gt, duration = gt[inside], duration[inside]
    if len(gt):
        np.testing.assert_allclose(temporal_iou(gt, gt, duration), 1.0)
        other = gt + 3.0
        other[:, 1] = np.minimum(other[:, 1], np.minimum(duration, 240.0))
        keep = other[:, 1] > other[:, 0]
        np.testing.assert_allclose(
            temporal_iou(other[keep], gt[keep], duration[keep]),
            temporal_iou(gt[keep], other[keep], duration[keep]), atol=1e-12)


@PROPERTY
@given(span_rows())
def test_clamped_predictions_stay_on_the_track(rows):
    pred, _, duration = rows
    out = clamp_prediction(pred, duration)
    assert (out[:, 0] >= 0).all() and (out[:, 1] <= np.minimum(duration, 240.0)).all()


@PROPERTY
@given(arrays(np.float64, st.tuples(st.integers(1, 20), st.just(2)),
              elements=st.floats(0, 240)))
def test_center_width_round_trip(se):
    se = np.sort(se, axis=1)
    np.testing.assert_allclose(cw_to_se(se_to_cw(se)), se, atol=1e-9)


@st.composite
def score_tables(draw: Any) -> tuple[np.ndarray, list[int], list[int]]:
    n, g = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    scores = draw(arrays(np.float64, (n, g), elements=st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.0])
                         | st.floats(-5, 5)))
    truth = draw(st.lists(st.integers(0, g - 1), min_size=n, max_size=n))
    return scores, list(range(g)), truth


@PROPERTY
@given(score_tables())
def test_ranks_obey_the_tie_rules_and_ignore_monotone_rescaling(table):
    scores, gallery, truth = table
    worst = retrieval_ranks(scores, gallery, truth)
    best = retrieval_ranks(scores, gallery, truth, ties="optimistic")
    mid = retrieval_ranks(scores, gallery, truth, ties="average")
    assert ((0 <= best) & (best <= mid) & (mid <= worst) & (worst <= len(gallery) - 1)).all()
    np.testing.assert_array_equal(retrieval_ranks(4.0 * scores, gallery, truth), worst)  # exact
    constant = retrieval_ranks(np.zeros_like(scores), gallery, truth)
    assert (constant == len(gallery) - 1).all()  # a constant scorer gets the worst rank


@PROPERTY
@given(st.lists(st.integers(0, 150), min_size=1, max_size=40),
       st.lists(st.floats(0, 1), min_size=40, max_size=40))
def test_reports_are_bounded_and_monotone(ranks, ious):
    ious = ious[: len(ranks)]
    r = retrieval_report(ranks)
    recalls = [r[f"R@{k}"] for k in (1, 5, 10, 25, 50, 100)]
    assert recalls == sorted(recalls) and 0 < r["MRR"] <= 1 and r["MeanR"] >= 1
    g = grounding_report_from_iou(ious)
    assert 0 <= g["mIoU"] <= 1 and g["IoU@0.3"] >= g["IoU@0.5"] >= g["IoU@0.7"]
    m = moment_recall_report(ranks, ious)
    for k in (1, 10, 100):
        for t in ("0.5", "0.7"):
            assert m[f"MoR@{k},{t}"] <= min(r[f"R@{k}"], g[f"IoU@{t}"])
    assert all(np.isfinite(v) for v in (*r.values(), *g.values(), *m.values()))


def test_no_warnings_from_a_clean_predict(tiny_fitted, served, small_train):
    X = small_train.frame.iloc[:5]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny_fitted.predict(X)
        served.predict(X)
