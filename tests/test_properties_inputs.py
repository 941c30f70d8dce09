"""Generated hostile inputs at every entry point of the library's API (hypothesis; the
budget is the profile of tests/conftest.py, see docs/reliability.md).

One property for all: the documented result, equal to the canonical input's where the
input is only another spelling of it (another container, dtype, byte order or memory
layout), or an error of the library's own type (``MGSVError``), raised by the library's
code and naming what is wrong, before any state changes. Never a third-party exception,
never a hang (pytest-timeout), never a changed fitted attribute after an error."""

from __future__ import annotations

import copy
import io
import warnings
from unittest import mock

import numpy as np
import pandas as pd
import pytest
from _hostile import (
    EXACT,
    HOSTILE_FLOATS,
    HOSTILE_TEXT,
    ROUNDING,
    assert_ours,
    boundaries,
    id_spellings,
    outcome,
    rounded,
    spell,
)
from hypothesis import example, given
from hypothesis import strategies as st

from mgsv_sk import (
    SCORER_NAMES,
    AnnotationError,
    InMemoryFeatures,
    get_scorer,
    read_annotations,
    retrieval_ranks,
    temporal_iou,
)
from mgsv_sk.errors import MGSVError

# a generated test that runs past this has hung (the default, 900 s, is for example fits)
pytestmark = pytest.mark.timeout(300)

ROWS = 4


@pytest.fixture(scope="module")
def bundle(exported_bundle):  # the runtime of the ``grounder`` fixture serves this bundle
    return exported_bundle


@pytest.fixture(scope="module")
def frame(small_train):
    return small_train.frame.head(ROWS).reset_index(drop=True)


def features_of(frame, source, how="numpy", tmp=None):
    """The features ``frame`` reads, held the way ``how`` names."""
    videos = {v: spell(source.video(v), how, tmp) for v in frame["video_id"]}
    music = {m: spell(source.music(m), how, tmp) for m in frame["music_id"]}
    return InMemoryFeatures(videos, music)


# -- containers: every spelling of a feature array reads as the canonical one ------------------
@given(how=st.sampled_from(EXACT + list(ROUNDING)))
@example(how="torch-grad")  # found: torch's "Can't call numpy() on Tensor that requires grad"
@example(how="torch-bfloat16")  # found: torch's "Got unsupported ScalarType BFloat16"
@example(how="pandas-Float64")  # found: read as dtype object and refused
def test_feature_containers_read_as_the_canonical_array(how, small_train, tmp_path):
    arr = small_train.features.video(small_train.frame["video_id"].iloc[0])
    src = InMemoryFeatures({"v": spell(arr, how, tmp_path)}, {"m": spell(
        small_train.features.music(small_train.frame["music_id"].iloc[0]), how, tmp_path)})
    got = src.video("v")
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, rounded(arr, how))


@given(how=st.sampled_from(EXACT))
@example(how="torch-grad")
def test_predict_and_rank_read_every_spelling_as_the_canonical_input(how, grounder, frame,
                                                                     small_train, tmp_path):
    want = grounder.predict(frame, features=features_of(frame, small_train.features))
    got = grounder.predict(frame, features=features_of(frame, small_train.features, how,
                                                        tmp_path))
    pd.testing.assert_frame_equal(got, want)


@given(how=st.sampled_from(EXACT + list(ROUNDING)))
def test_metrics_read_every_spelling_as_the_canonical_input(how, tmp_path):
    rng = np.random.default_rng(0)
    pred = np.sort(rng.uniform(0, 60, (5, 2)), axis=1).astype(np.float32)
    gt = np.sort(rng.uniform(0, 60, (5, 2)), axis=1).astype(np.float32)
    want = temporal_iou(rounded(pred, how), rounded(gt, how), 60.0)
    np.testing.assert_allclose(temporal_iou(spell(pred, how, tmp_path), spell(gt, how, tmp_path),
                                            60.0), want, rtol=1e-6)
    scores = rng.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(
        retrieval_ranks(spell(scores, how, tmp_path), ["a", "b", "c", "d"], ["a", "b", "c"]),
        retrieval_ranks(rounded(scores, how), ["a", "b", "c", "d"], ["a", "b", "c"]))


# -- values: NaN, inf, huge, negative, empty, ragged --------------------------------------------
@given(value=HOSTILE_FLOATS, row=st.integers(0, 4), rows=st.sampled_from([0, 1, 5, 51]),
       width=st.sampled_from([512, 511, 0]))
@example(value=1e300, row=0, rows=5, width=512)  # found: overflow read as "NaN or inf" only
def test_hostile_feature_values_are_read_or_refused_by_us(value, row, rows, width):
    arr = np.ones((rows, width), np.float64)
    if rows and width:
        arr[min(row, rows - 1), 0] = value
    kind, result = outcome(lambda: InMemoryFeatures({"v": arr}, {}))
    if kind == "ok":
        assert 1 <= rows <= 50 and width == 512 and np.isfinite(result.video("v")).all()
    else:
        assert "video features at id 'v'" in str(result)


@pytest.mark.parametrize("given_value", [[[1.0] * 512, [1.0] * 511], None, "text",
                                         {"a": 1}, np.array(["x"] * 512)[None, :],
                                         np.zeros((2, 512), "m8[s]"), [np.ones(512)] * 2])
def test_odd_feature_objects_are_refused_by_us(given_value):
    kind, result = outcome(lambda: InMemoryFeatures({"v": given_value}, {}))
    assert kind == "error" or result.video("v").shape == (2, 512)


def test_features_given_as_a_list_are_refused_by_us():
    with pytest.raises(MGSVError) as info:
        InMemoryFeatures([np.ones((2, 512))], {})
    assert_ours(info.value, "mapping of id -> array")


# -- annotation frames: dtypes that are spellings, values that are hostile ----------------------
SPELLINGS = {
    "category-ids": lambda f: f.assign(video_id=f.video_id.astype("category"),
                                       music_id=f.music_id.astype("category")),
    "string-ids": lambda f: f.assign(video_id=f.video_id.astype("string"),
                                     music_id=f.music_id.astype("string[pyarrow]")),
    "Float64-times": lambda f: f.astype({c: "Float64" for c in f.columns
                                         if f[c].dtype.kind == "f"}),
    "arrow-times": lambda f: f.astype({c: "double[pyarrow]" for c in f.columns
                                       if f[c].dtype.kind == "f"}),
    "big-endian-times": lambda f: f.assign(**{c: f[c].to_numpy().astype(">f8") for c in f.columns
                                              if f[c].dtype.kind == "f"}),
    "object-times": lambda f: f.astype({c: object for c in f.columns if f[c].dtype.kind == "f"}),
    "other-index": lambda f: f.set_index(pd.Index([f"r{i}" for i in range(len(f))])),
    "read-only": lambda f: pd.DataFrame({c: _readonly(f[c].to_numpy()) for c in f.columns}),
}


def _readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


@given(spelling=st.sampled_from(sorted(SPELLINGS)), rank=st.booleans())
def test_frame_spellings_predict_as_the_canonical_frame(spelling, rank, grounder, frame):
    X = SPELLINGS[spelling](frame.copy())
    if rank:
        want = grounder.rank(frame, k=2)
        got = grounder.rank(X, k=2)
        pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True))
    else:
        want = grounder.predict(frame)
        got = grounder.predict(X)
        pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True))
        assert list(got.index) == list(X.index)


COLUMNS = ["video_id", "music_id", "music_start", "music_end", "music_total_duration",
           "video_start", "video_end"]


@given(column=st.sampled_from(COLUMNS), row=st.integers(0, ROWS - 1),
       value=st.one_of(HOSTILE_FLOATS, HOSTILE_TEXT, st.none(), st.integers(-2, 10**20)),
       method=st.sampled_from(["predict", "rank", "decision_function", "score"]))
def test_hostile_frame_values_give_a_result_or_our_error(column, row, value, method, grounder,
                                                         frame):
    X = frame.copy().astype({column: object})
    X.loc[row, column] = value
    before = getattr(grounder, "catalogue_ids_", None)
    kind, result = outcome(lambda: getattr(grounder, method)(X))
    if kind == "ok" and method in ("predict",):
        assert len(result) == len(X) and np.isfinite(result[["start", "end"]].to_numpy()).all()
    assert getattr(grounder, "catalogue_ids_", None) == before


@given(X=st.sampled_from(["dict", "records", "series", "array", "dask", "none", "empty"]))
def test_frames_in_other_containers_are_refused_by_us(X, grounder, frame):
    import dask.dataframe as dd

    given_x = {"dict": frame.to_dict("list"), "records": frame.to_dict("records"),
               "series": frame.iloc[0], "array": frame.to_numpy(),
               "dask": dd.from_pandas(frame, npartitions=2), "none": None,
               "empty": frame.iloc[:0]}[X]
    with pytest.raises(MGSVError) as info:
        grounder.predict(given_x)
    assert_ours(info.value, "X")


# -- ids: every sequence of ids is the same catalogue ------------------------------------------
@given(data=st.data())
def test_catalogue_ids_in_every_container_are_the_same_catalogue(data, tiny_fitted):
    ids = tiny_fitted.catalogue_ids_[:4]
    music_ids = data.draw(id_spellings(ids))
    model = copy.deepcopy(tiny_fitted)
    model.set_catalogue(music_ids)
    assert model.catalogue_ids_ == ids


@given(ids=st.lists(HOSTILE_TEXT, min_size=0, max_size=4))
def test_hostile_catalogue_ids_are_refused_before_the_catalogue_changes(ids, grounder):
    before = list(grounder.catalogue_ids_) if hasattr(grounder, "catalogue_ids_") else None
    kind, _ = outcome(lambda: grounder.set_catalogue(ids))
    if kind == "error" and before is not None:
        assert list(grounder.catalogue_ids_) == before


@given(k=st.one_of(st.integers(-3, 200), st.sampled_from([1.0, 2.5, True, False, np.int64(3),
                                                         np.nan, "3", None])))
def test_rank_k_gives_min_k_tracks_or_our_error(k, grounder, frame):
    kind, result = outcome(lambda: grounder.rank(frame, k=k))
    if kind == "ok":
        n = len(grounder.catalogue_ids_) if hasattr(grounder, "catalogue_ids_") else None
        per_video = result.groupby("video_id", sort=False).size()
        assert (per_video <= int(k)).all() and (n is None or (per_video == min(int(k), n)).all())
    else:
        assert "k" in str(result)


# -- time geometry ---------------------------------------------------------------------------
class _Reached(Exception):
    """Training was about to start: the input was accepted."""


def _geometry_frame(small_train, start, end, video_end):
    X = small_train.frame.head(12).copy()
    X.loc[0, ["music_start", "music_end"]] = [start, end]
    X.loc[0, ["video_start", "video_end"]] = [0.0, video_end]
    X.loc[0, "music_total_duration"] = max(float(X.loc[0, "music_total_duration"]), end)
    return X


@given(data=st.data())
@example(data=None)  # found: a moment past the track's features was trained on silently
def test_fit_time_geometry_is_trained_or_refused_before_anything_changes(data, tiny_fitted,
                                                                         small_train):
    from mgsv_sk.train import fitting

    row = small_train.frame.iloc[0]
    extent = min(len(small_train.features.music(row["music_id"])) * 2.5, 240.0)
    points = boundaries(float(row["video_end"] - row["video_start"]),
                        float(row["music_total_duration"]), extent)
    if data is None:  # the regression: a moment wholly past the features
        start, length = extent + 0.5, 5.0
    else:
        start = data.draw(st.sampled_from(points))
        length = data.draw(st.sampled_from([0.5, 5.0, 50.0, 50.5]))
    X = _geometry_frame(small_train, start, start + length, length)
    model = copy.deepcopy(tiny_fitted)
    token = model.fit_token_
    with mock.patch.object(fitting, "fit_grounder", side_effect=_Reached), \
            mock.patch("mgsv_sk.estimators.made.fit_grounder", side_effect=_Reached), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model.fit(X)
            raise AssertionError("fit_grounder was not reached")
        except _Reached:
            accepted = True
        except MGSVError as exc:
            assert_ours(exc)
            assert isinstance(exc, AnnotationError) and "row" in str(exc)
            accepted = False
    if start >= extent:
        assert not accepted
    if not accepted:
        assert model.fit_token_ == token  # the earlier fit is whole


@given(video_seconds=st.sampled_from([0.5, 1.0, 30.0, 50.0, 50.5, 60.0, 239.0, 240.5]))
def test_predicted_moments_lie_on_the_track_features(video_seconds, grounder, frame, small_train):
    X = frame.copy()
    X["video_start"], X["video_end"] = 0.0, video_seconds
    X = X.drop(columns=["video_segment_duration"], errors="ignore")
    kind, out = outcome(lambda: grounder.predict(X))
    if kind == "ok":
        extent = np.array([min(len(small_train.features.music(m)) * 2.5, 240.0)
                           for m in out["music_id"]])
        assert (out["start"] >= 0).all() and (out["end"] <= extent + 1e-3).all()
        assert (out["end"] >= out["start"]).all()


# -- readers and scorers -----------------------------------------------------------------------
@given(ids=st.lists(HOSTILE_TEXT, min_size=1, max_size=3),
       encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16"]),
       newline=st.sampled_from(["\n", "\r\n"]))
def test_annotation_csvs_are_read_as_written_or_refused_by_us(ids, encoding, newline):
    rows = [f'"{i.replace(chr(34), "")}",m,0,10,60' for i in ids]
    text = newline.join(["video_id,music_id,music_start,music_end,music_total_duration", *rows])
    try:
        raw = text.encode(encoding)
    except UnicodeEncodeError:
        return
    kind, result = outcome(lambda: read_annotations(io.BytesIO(raw)))
    if kind == "ok":
        assert len(result) <= len(ids)


@given(name=st.sampled_from(sorted(SCORER_NAMES)), column=st.sampled_from(COLUMNS),
       value=st.one_of(HOSTILE_FLOATS, HOSTILE_TEXT))
def test_scorers_give_a_float_or_our_error(name, column, value, tiny_fitted, frame):
    X = frame.copy().astype({column: object})
    X.loc[0, column] = value
    kind, result = outcome(lambda: get_scorer(name)(tiny_fitted, X))
    if kind == "ok":
        assert isinstance(result, float)
