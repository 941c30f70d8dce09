"""The rest of docs/api.md given generated hostile arguments: the reports and the
synthetic generator, the baselines, pack_features and the exporters, the media helpers,
the plots, the distributed and sharding helpers. The property of
tests/test_properties_inputs.py: the documented result or the library's own error, raised by
the library's code; never a third-party exception."""

from __future__ import annotations

import copy
import os

import numpy as np
import pandas as pd
import pytest
from _hostile import EXACT, HOSTILE_FLOATS, HOSTILE_TEXT, outcome, spell
from hypothesis import example, given
from hypothesis import strategies as st

from mgsv_sk import (
    RidgeGrounder,
    TrivialGrounder,
    evaluate,
    grounding_report,
    make_synthetic_mgsv,
    moment_recall_report,
    pack_features,
    retrieval_report,
    validate_annotations,
)

# a generated test that runs past this has hung (the default, 900 s, is for example fits)
pytestmark = pytest.mark.timeout(300)

ANY = st.one_of(HOSTILE_FLOATS, HOSTILE_TEXT, st.none(), st.booleans(), st.integers(-3, 10**9),
                st.lists(st.floats(allow_nan=True), max_size=4))


@given(how=st.sampled_from(EXACT), bad=st.one_of(st.none(), HOSTILE_FLOATS),
       thresholds=st.sampled_from([(0.5,), (), (1.5,), (np.nan,)]))
def test_reports_read_any_container_and_refuse_hostile_values(how, bad, thresholds, tmp_path):
    pred = np.array([[0.0, 10.0], [5.0, 20.0]], np.float32)
    gt = np.array([[2.0, 12.0], [5.0, 15.0]], np.float32)
    if bad is not None:
        pred[1, 1] = bad
    kind, result = outcome(lambda: grounding_report(spell(pred, how, tmp_path),
                                                    spell(gt, how, tmp_path), 60.0, thresholds))
    if kind == "ok":
        assert all(np.isfinite(v) for v in result.values())
    ranks = np.array([[0.0, 3.0, 1.0]], np.float32)
    if bad is not None:
        ranks[0, 1] = bad
    outcome(lambda: retrieval_report(spell(ranks, how, tmp_path)[0] if how != "list" else
                                     spell(ranks, how, tmp_path)[0]))
    outcome(lambda: moment_recall_report(ranks[0], np.array([0.2, 0.9, 0.5])))


@given(n_videos=ANY, n_tracks=ANY, world=HOSTILE_TEXT, random_state=ANY)
@example(n_videos=None, n_tracks=5, world="aligned", random_state=0)  # found: raw TypeError
def test_the_synthetic_generator_refuses_hostile_arguments(n_videos, n_tracks, world,
                                                           random_state):
    n_videos = n_videos if not isinstance(n_videos, int) or n_videos < 50 else 50
    outcome(lambda: make_synthetic_mgsv(n_videos, n_tracks if not isinstance(n_tracks, int)
                                        or n_tracks < 20 else 20, world=world,
                                        random_state=random_state))


@given(column=st.sampled_from(["video_id", "music_id", "music_start", "music_end",
                               "music_total_duration"]), value=ANY,
       model=st.sampled_from(["trivial", "ridge"]), method=st.sampled_from(["fit", "predict",
                                                                             "rank", "score"]))
def test_the_baselines_give_a_result_or_our_error(column, value, model, method, small_train):
    X = small_train.frame.head(30).copy()
    est = (TrivialGrounder() if model == "trivial" else RidgeGrounder(
        features=small_train.features)).fit(X)
    before = copy.deepcopy(vars(est))
    X = X.astype({column: object})
    X.loc[X.index[1], column] = value
    kind, _ = outcome(lambda: getattr(est, method)(X))
    if kind == "error" and method == "fit":
        assert set(vars(est)) == set(before)


@given(value=ANY)
def test_validate_annotations_and_evaluate_give_a_result_or_our_error(value, tiny_fitted,
                                                                      small_train):
    X = small_train.frame.head(6).copy().astype({"music_end": object})
    X.loc[X.index[2], "music_end"] = value
    outcome(lambda: validate_annotations(X))
    outcome(lambda: evaluate(tiny_fitted, X))


@given(ids=st.lists(HOSTILE_TEXT, max_size=3), overwrite=st.booleans())
def test_pack_features_refuses_hostile_ids_before_writing(ids, overwrite, small_train,
                                                          tmp_path_factory):
    out = tmp_path_factory.mktemp("pack") / "store"
    kind, _ = outcome(lambda: pack_features(small_train.features, out, video_ids=ids,
                                            music_ids=[], overwrite=overwrite))
    if kind == "error":
        assert not out.exists() or not any(out.iterdir())


@given(dst=st.sampled_from(["file", "bundle-itself", "model"]),
       states=st.sampled_from(["int8", "float32", "bogus", ""]))
@example(dst="file", states="int8")  # found: the builtin FileExistsError, not ours
def test_compact_bundle_refuses_hostile_targets(dst, states, exported_bundle, tiny_fitted,
                                                tmp_path_factory):
    from mgsv_sk.export.compact_bundle import compact_bundle

    root = tmp_path_factory.mktemp("compact")
    target = {"file": root / "f", "bundle-itself": exported_bundle, "model": root / "m"}[dst]
    if dst == "file":
        target.write_text("x")
    src = exported_bundle
    if dst == "model":
        tiny_fitted.save(root / "saved")
        src, target = root / "saved", root / "out"
    kind, _ = outcome(lambda: compact_bundle(src, target, states=states))
    assert kind == "error"


@given(kind=st.sampled_from(["missing", "folder", "fifo", "text", "empty"]))
@example(kind="text")  # found: av.error.InvalidDataError surfaced raw
def test_media_loaders_refuse_what_is_not_media(kind, tmp_path_factory):
    pytest.importorskip("av")
    from mgsv_sk.extract import load_clip, load_track, media_ids

    root = tmp_path_factory.mktemp("media")
    path = root / "clip.mp4"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "text":
        path.write_text("not a video")
    elif kind == "empty":
        path.write_bytes(b"")
    for load in (load_clip, load_track):
        assert outcome(lambda load=load: load(path))[0] == "error"
    outcome(lambda: media_ids([path, path], "video"))


@given(wave=st.sampled_from(["empty", "nan", "2d", "int", "huge"]), how=st.sampled_from(EXACT))
@example(wave="empty", how="numpy")  # found: numpy's "window shape cannot be larger"
@example(wave="nan", how="numpy")  # found: NaN samples gave a NaN filterbank
@example(wave="2d", how="torch-grad")  # found: torch's "Can't call numpy() on ... grad"
def test_fbank_reads_any_container_or_refuses(wave, how, tmp_path):
    pytest.importorskip("av")
    from mgsv_sk.extract import ast_inputs, kaldi_fbank

    base = np.sin(np.linspace(0, 100, 16000)).astype(np.float32)[None, :]
    arr = {"empty": base[:, :0], "nan": np.where(base > 0.99, np.nan, base), "2d": base,
           "int": (base * 1000).astype(np.float32), "huge": base * 1e30}[wave]
    given_wave = spell(arr, how, tmp_path)
    given_wave = given_wave[0] if isinstance(given_wave, list) else given_wave
    outcome(lambda: kaldi_fbank(np.asarray(given_wave)[0] if how == "numpy" else given_wave))
    outcome(lambda: ast_inputs(base[0], np.array([[0.0, 1.0]])))


@given(n=ANY, n_shards=ANY)
@example(n=10, n_shards=None)  # found: raw TypeError comparing None with int
def test_shard_bounds_cover_the_rows_or_refuse(n, n_shards):
    from mgsv_sk.search.sharded import shard_bounds

    kind, bounds = outcome(lambda: shard_bounds(n, n_shards))
    if kind == "ok":
        assert bounds[0] == 0 and bounds[-1] == n and (np.diff(bounds) >= 0).all()


@given(rank=HOSTILE_TEXT, world=HOSTILE_TEXT)
def test_init_from_env_refuses_a_hostile_environment(rank, world, monkeypatch):
    from mgsv_sk.train.distributed import init_from_env, is_main_process

    with pytest.MonkeyPatch.context() as env:
        env.setenv("RANK", rank.replace("\x00", ""))
        env.setenv("WORLD_SIZE", world.replace("\x00", ""))
        env.setenv("LOCAL_RANK", "0")
        kind, ctx = outcome(lambda: init_from_env("gloo") if False else None)
        assert kind == "ok" and ctx is None
        outcome(is_main_process)


@given(frame_kind=st.sampled_from(["no-columns", "one-row", "nan", "none"]),
       ax=st.sampled_from([None, "not-an-axes"]))
def test_plots_draw_or_refuse(frame_kind, ax, tiny_fitted, small_train):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from mgsv_sk.plot import (
        plot_fit_budget,
        plot_generalisation,
        plot_prediction,
        plot_recall_at_k,
        plot_timeline,
        plot_training_curves,
    )

    X = {"no-columns": pd.DataFrame({"x": [1]}), "one-row": small_train.frame.head(1),
         "nan": small_train.frame.head(2).assign(music_end=np.nan),
         "none": None}[frame_kind]
    outcome(lambda: plot_prediction(tiny_fitted, X, ax=ax))
    outcome(lambda: plot_timeline(np.nan if frame_kind == "nan" else 60.0, (0, 10), (5, 1),
                                  ax=ax))
    outcome(lambda: plot_recall_at_k([0, 1, np.nan] if frame_kind == "nan" else [0, 1],
                                     ax=ax))
    outcome(lambda: plot_training_curves(X if frame_kind != "one-row" else tiny_fitted))
    outcome(lambda: plot_generalisation({"a": X}))
    budget = {"nan": float("nan"), "none": None}.get(frame_kind, 1.0)
    outcome(lambda: plot_fit_budget({"a": {"defaults": {"fit_seconds": 10.0, "R@1": budget}}},
                                    ax=ax))
    outcome(lambda: plot_fit_budget({"a": X}, ax=ax))
    plt.close("all")


@given(how=st.sampled_from(EXACT),
       seconds=st.one_of(st.floats(0.5, 1e6), ANY, st.lists(ANY, max_size=3)),
       k=st.one_of(st.integers(1, 40), ANY), frames=st.integers(0, 60),
       bad=st.one_of(st.none(), st.none(), HOSTILE_FLOATS))
@example(how="numpy", seconds=12.0, k=3, frames=12, bad=None)
@example(how="list", seconds=1e300, k=10**9, frames=50, bad=None)
@example(how="torch-non-contiguous", seconds=30.0, k=5, frames=7, bad=None)
def test_rank_frames_answers_as_rank_or_refuses(how, seconds, k, frames, bad, tiny_fitted,
                                                small_train, tmp_path_factory):
    """The server's array twin of rank: for any container, lengths and k, the rows rank
    gives on the same features, or the library's own error."""
    video = small_train.features.video(small_train.frame["video_id"].iloc[0])
    arr = np.resize(video, (frames, video.shape[1])).astype(np.float32)
    if bad is not None and frames:
        with np.errstate(over="ignore"):
            arr[frames // 2, 3] = bad
    lengths = seconds if isinstance(seconds, list) else [seconds]
    kind, top = outcome(lambda: tiny_fitted.rank_frames(
        [spell(arr, how, tmp_path_factory.mktemp("frames"))] if frames else [arr], lengths,
        k=k))
    if kind == "ok":
        query = pd.DataFrame({"video_id": ["v"], "video_segment_duration": lengths})
        table = tiny_fitted.rank(query, k=k, features=({"v": arr}, {}))
        assert top.music_ids == table["music_id"].tolist()
        np.testing.assert_array_equal(top.score, table["score"].to_numpy())
        assert np.isfinite(top.score).all() and (top.start[:, 0] < top.end[:, 0]).all()
