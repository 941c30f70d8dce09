"""Issue 22, roots 6-8: concurrent writers of one artefact take turns; moments lie on their
track; a features= override is honoured or refused, never answered from stale encodings;
a moved store can be pointed at; settable counts are checked; a failing refit keeps the
previous fit; a bundle's graphs must match its manifest."""

from __future__ import annotations

import copy
import json
import multiprocessing
import shutil
import threading
import time

import numpy as np
import pandas as pd
import pytest

from mgsv_sk import MGSVGrounder, make_synthetic_mgsv, pack_features
from mgsv_sk.cli import main
from mgsv_sk.data.features import FeatureError, InMemoryFeatures
from mgsv_sk.files._atomic import writer_lock


@pytest.fixture(scope="module")
def bundle(tiny_fitted, tmp_path_factory):
    from mgsv_sk.export.to_onnx import export_onnx

    return export_onnx(tiny_fitted, tmp_path_factory.mktemp("r3state") / "bundle", check=False)


# == root 6: concurrent writers ==============================================================
def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_writers_of_one_folder_take_turns(tiny_fitted, tmp_path):
    dst = tmp_path / "model"
    results: dict[str, object] = {}

    def save(name: str, overwrite: bool) -> None:
        try:
            tiny_fitted.save(dst, overwrite=overwrite)
            results[name] = "saved"
        except Exception as exc:  # noqa: BLE001 - recorded and checked below
            results[name] = exc

    with writer_lock(dst):  # both writers finish writing, then wait for the swap
        threads = [threading.Thread(target=save, args=(n, False)) for n in ("a", "b")]
        for t in threads:
            t.start()
        time.sleep(1.0)
        assert not dst.exists() and results == {}
    for t in threads:
        t.join(30)
    outcomes = sorted(map(str, results.values()))
    assert outcomes[1] == "saved" and "already exists; pass overwrite=True" in outcomes[0]
    assert isinstance([v for v in results.values() if v != "saved"][0], FileExistsError)
    assert MGSVGrounder.load(dst).catalogue_ids_ == tiny_fitted.catalogue_ids_
    assert _leftovers(tmp_path) == []


def test_a_writer_waiting_too_long_gets_a_clear_error(tmp_path):
    caught: list[BaseException] = []

    def other_writer() -> None:
        try:
            with writer_lock(tmp_path / "m", timeout=0.2):
                pass
        except BaseException as exc:  # noqa: BLE001
            caught.append(exc)

    with writer_lock(tmp_path / "m"):
        with writer_lock(tmp_path / "m"):  # reentrant within one thread (nested writers)
            thread = threading.Thread(target=other_writer)
            thread.start()
            thread.join(10)
    assert isinstance(caught[0], FileExistsError)
    assert "another process is writing" in str(caught[0]) and "(it holds" in str(caught[0])
    assert _leftovers(tmp_path) == []  # the lock file goes with its holder


def _save_loop(model, path, rounds: int, errors) -> None:
    try:
        for _ in range(rounds):
            model.save(path, overwrite=True)
    except Exception as exc:  # noqa: BLE001
        errors.put(f"{type(exc).__name__}: {exc}")


def test_processes_saving_over_one_folder_never_collide(tiny_fitted, tmp_path):
    ctx = multiprocessing.get_context("fork")
    errors = ctx.Queue()
    dst = tmp_path / "model"
    procs = [ctx.Process(target=_save_loop, args=(tiny_fitted, dst, 4, errors))
             for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert errors.empty(), errors.get()
    assert all(p.exitcode == 0 for p in procs)
    assert MGSVGrounder.load(dst).catalogue_ids_ == tiny_fitted.catalogue_ids_
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("swap", ["gone", "replaced"])
def test_a_folder_swapped_while_it_is_judged_is_judged_again(tmp_path, monkeypatch, swap):
    # Another writer's two renames may fall between listing the folder and reading its
    # marker: the marker then reads as missing, which must not pass for "not ours".
    from mgsv_sk.files import _atomic

    dst = tmp_path / "model"
    dst.mkdir()
    (dst / "manifest.json").write_text(json.dumps({"format": "mgsv_sk.model/1"}))
    real = _atomic.Artefact.recognises
    calls = []

    def swapping(self, folder):
        calls.append(folder)
        if len(calls) == 1:  # the other writer moves the folder away mid-look
            dst.rename(tmp_path / ".model.old")
            if swap == "replaced":
                shutil.copytree(tmp_path / ".model.old", dst)
            return False
        return real(self, folder)

    monkeypatch.setattr(_atomic.Artefact, "recognises", swapping)
    assert _atomic.check_destination(dst, overwrite=True, replaces=_atomic.MODEL_FOLDER) == dst
    # ... while a folder that stays put and is not ours is still refused
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        _atomic.check_destination(tmp_path / "mine", overwrite=True)


def test_two_extractions_into_one_store_keep_each_others_tracks(tmp_path):
    import sys
    from pathlib import Path

    pytest.importorskip("soundfile")
    sys.path.insert(0, str(Path(__file__).parent))
    from _media import StubMusicEncoder, write_audio

    from mgsv_sk.extract.recommend import build_catalogue

    folders = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        for i in range(3):
            write_audio(folder / f"{name}{i}.wav", 2.0, freq=200 + 50 * i)
        folders.append(folder)
    errors: list[BaseException] = []

    def run(folder) -> None:
        try:
            build_catalogue([folder], tmp_path / "cat", music_encoder=StubMusicEncoder())
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f,)) for f in folders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    from mgsv_sk.data.features import PackedFeatures

    assert sorted(PackedFeatures(tmp_path / "cat").music_ids()) == [
        "a0", "a1", "a2", "b0", "b1", "b2"]
    assert _leftovers(tmp_path) == [] and not (tmp_path / "cat.parts").exists()


# == root 7: geometry ========================================================================
def _short_track_source(small_train) -> InMemoryFeatures:
    v = small_train.frame["video_id"].iloc[0]
    m = small_train.frame["music_id"].iloc[0]
    return InMemoryFeatures({v: small_train.features.video(v)},
                            {"short": small_train.features.music(m)[:1],
                             "long": small_train.features.music(m)})


def test_moments_lie_on_a_track_shorter_than_the_video(grounder, small_train):
    source = _short_track_source(small_train)
    grounder.set_catalogue(["short", "long"], features=source)
    v = small_train.frame["video_id"].iloc[0]
    for X in (pd.DataFrame({"video_id": [v], "music_id": ["short"]}),
              pd.DataFrame({"video_id": [v], "video_segment_duration": [30.0],
                            "music_id": ["short"]})):
        pred = grounder.predict(X, features=source, moments_per_track=3)
        assert pred["start"].iloc[0] >= 0 and pred["end"].iloc[0] <= 2.5 + 1e-6
        assert all(0 <= s < e <= 2.5 + 1e-6 for s, e, _ in pred["windows"].iloc[0])
    ranked = grounder.rank(pd.DataFrame({"video_id": [v], "video_segment_duration": [30.0]}),
                           k=2, features=source)
    short = ranked.set_index("music_id").loc["short"]
    assert 0 <= short["start"] < short["end"] <= 2.5 + 1e-6
    long = ranked.set_index("music_id").loc["long"]
    assert long["end"] - long["start"] == pytest.approx(30.0, abs=1e-3)  # fits: kept whole


def test_without_video_times_the_valid_frames_count_in_both_backends(grounder, small_train):
    X = small_train.frame.iloc[:6]
    bare = grounder.predict(X[["video_id", "music_id"]])
    frames = small_train.features.video_lengths(X["video_id"])
    counted = grounder.predict(X[["video_id", "music_id"]].assign(
        video_segment_duration=frames.astype(float)))
    pd.testing.assert_frame_equal(bare, counted)
    lengths = (bare["end"] - bare["start"]).to_numpy()
    np.testing.assert_allclose(lengths, frames, atol=1e-3)


def test_both_backends_ground_a_bare_frame_alike(tiny_fitted, bundle, small_train):
    from mgsv_sk.export.runtime import OnnxGrounder

    X = small_train.frame.iloc[:8][["video_id", "music_id"]]
    served = OnnxGrounder.load(bundle, 1, features=small_train.features)
    a, b = tiny_fitted.predict(X), served.predict(X)
    np.testing.assert_allclose(a[["start", "end"]], b[["start", "end"]], atol=1e-3)


# == root 7: state ===========================================================================
def _changed(small_train, tracks) -> InMemoryFeatures:
    """A source holding the same videos and the given tracks with other features."""
    rng = np.random.default_rng(0)
    src = small_train.features
    videos = {v: src.video(v) for v in small_train.frame["video_id"]}
    music = {m: rng.normal(size=src.music(m).shape).astype(np.float32) for m in tracks}
    return InMemoryFeatures(videos, music)


def test_a_features_override_is_honoured_for_smg_and_msg(grounder, small_train):
    X = small_train.frame.iloc[:5]
    all_tracks = list(grounder.catalogue_ids_)
    new = _changed(small_train, all_tracks)
    fresh = copy.deepcopy(grounder) if isinstance(grounder, MGSVGrounder) else grounder
    before_smg = grounder.predict(X)
    got_smg = grounder.predict(X, features=new)
    got_msg = grounder.predict(X.drop(columns="music_id"), features=new)
    assert not np.allclose(got_smg["score"], before_smg["score"])  # not the cached encodings
    fresh.set_catalogue(all_tracks, features=new)
    pd.testing.assert_frame_equal(got_smg, fresh.predict(X, features=new))
    pd.testing.assert_frame_equal(got_msg, fresh.predict(X.drop(columns="music_id"),
                                                         features=new))


def test_a_partial_override_is_refused(grounder, small_train):
    X = small_train.frame.iloc[:5]
    some = _changed(small_train, X["music_id"].iloc[:1].tolist())
    with pytest.raises(ValueError, match=r"features= holds 1 of the .* track\(s\)"):
        grounder.predict(X, features=some)
    videos_only = InMemoryFeatures({v: small_train.features.video(v) for v in X["video_id"]}, {})
    pd.testing.assert_frame_equal(grounder.predict(X, features=videos_only), grounder.predict(X))


def test_a_pickled_model_whose_store_moved_can_be_pointed_at_it(tiny_fitted, small_train,
                                                                 tmp_path):
    import joblib

    store = pack_features(small_train.features, tmp_path / "store",
                          annotations=small_train.frame)
    model = copy.deepcopy(tiny_fitted).set_params(features=store)
    X = small_train.frame.iloc[:4]
    want = model.predict(X)
    joblib.dump(model, tmp_path / "model.joblib")
    shutil.move(tmp_path / "store", tmp_path / "moved")
    loaded = joblib.load(tmp_path / "model.joblib")  # loads although the store is gone
    with pytest.raises(FileNotFoundError, match=r"set_params\(features=NEW_PATH\)"):
        loaded.predict(X)
    loaded.set_params(features=str(tmp_path / "moved"))
    pd.testing.assert_frame_equal(loaded.predict(X), want)


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "3"])
def test_settable_counts_are_checked(grounder, small_train, bad):
    from mgsv_sk.export.runtime import OnnxGrounder

    X = small_train.frame.iloc[:2].drop(columns="music_id")
    if isinstance(grounder, OnnxGrounder):
        with pytest.raises(ValueError, match="xpool_top_k must be a positive integer or None"):
            grounder.xpool_top_k = bad
        with pytest.raises(ValueError, match="track_chunk must be a positive integer"):
            grounder.track_chunk = bad
        grounder.xpool_top_k = 3  # valid values are kept
        assert grounder.xpool_top_k == 3
    else:
        grounder.set_params(xpool_top_k=bad)
        with pytest.raises(ValueError, match="xpool_top_k must be a positive integer or None"):
            grounder.predict(X)


def test_a_refit_on_a_corrupt_feature_file_keeps_the_previous_fit(tmp_path):
    data = make_synthetic_mgsv(16, 4, random_state=2, path=tmp_path / "rel")
    model = MGSVGrounder(features=str(data.root), d_model=32, n_heads=2, encoder_layers=1,
                         decoder_layers=2, batch_size=16, max_epochs=1, random_state=0,
                         n_threads=1, validation_fraction=0).fit(data.frame)
    X = data.frame.iloc[:3]
    before = model.predict(X)
    last = data.frame["video_id"].iloc[-1]
    (data.root / "features" / "Kuai_feature" / "vit_feature1" / "vit_feature"
     / f"{last}.pt").write_bytes(b"garbage")
    with pytest.raises(FeatureError, match=f"video_id '{last}'"):
        model.fit(data.frame)
    pd.testing.assert_frame_equal(model.predict(X), before)  # still the previous fit


# == root 8: bundles =========================================================================
def _copy_bundle(bundle, tmp_path):
    out = tmp_path / "bundle"
    shutil.copytree(bundle, out)
    return out


def _rewrite(folder, edit) -> None:
    from mgsv_sk.export.manifest import write_manifest

    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    write_manifest(folder, {k: v for k, v in manifest.items() if k != "files"})


def test_a_swapped_graph_is_refused_at_load(bundle, tmp_path, capsys):
    from mgsv_sk.export.manifest import BundleError
    from mgsv_sk.export.runtime import OnnxGrounder

    folder = _copy_bundle(bundle, tmp_path)
    shutil.copyfile(folder / "graphs" / "music_encoder.onnx",
                    folder / "graphs" / "video_encoder.onnx")
    _rewrite(folder, lambda m: None)  # checksums of the swapped file: only shapes can tell
    with pytest.raises(BundleError, match="the video_encoder graph graphs/video_encoder.onnx "
                                          "does not match its manifest"):
        OnnxGrounder.load(folder)
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    assert main(["recommend", str(video), "--model", str(folder)]) == 1
    assert "does not match its manifest" in capsys.readouterr().err


def _encoder_graph(path, input_shape) -> None:
    """A valid graph of another encoder: (batch, *input_shape) -> mean over the last axis."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("inputs", TensorProto.FLOAT, ["batch", *input_shape])
    y = helper.make_tensor_value_info("embedding", TensorProto.FLOAT,
                                      ["batch", *input_shape[:-1]])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [len(input_shape)])
    graph = helper.make_graph([helper.make_node("ReduceMean", ["inputs", "axes"], ["embedding"],
                                                keepdims=0)], "enc", [x], [y], [axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.mark.parametrize("files", [{"int8": "graphs/video_features.int8.onnx"},
                                   {"fp32": "graphs/video_features.onnx"}])
def test_bundle_encoders_are_checked_and_an_int8_only_one_works(bundle, tmp_path, files):
    pytest.importorskip("onnx")
    from mgsv_sk.export.manifest import BundleError
    from mgsv_sk.export.runtime import OnnxGrounder

    folder = _copy_bundle(bundle, tmp_path)
    rel = next(iter(files.values()))
    _encoder_graph(folder / rel, [3, 224])  # (batch, 3, 224) -> (batch, 3)
    _rewrite(folder, lambda m: m.__setitem__("encoders", {"video": {
        "name": "x", "dim": 3, "input_shape": [3, 224], "files": files}}))
    served = OnnxGrounder.load(folder)  # fp32 default; an int8-only encoder is used as is
    assert served.video_encoder.dim == 3 and served.video_encoder.path.name == rel.split("/")[-1]
    _rewrite(folder, lambda m: m["encoders"]["video"].__setitem__("input_shape", [3, 224, 224]))
    with pytest.raises(BundleError, match=r"takes inputs of shape \['batch', 3, 224\], "
                                          r"expected \[batch, 3, 224, 224\]"):
        OnnxGrounder.load(folder)
    _rewrite(folder, lambda m: m["encoders"]["video"].update(input_shape=[3, 224], dim=512))
    with pytest.raises(BundleError, match="gives 3-d embeddings, expected 512"):
        OnnxGrounder.load(folder)
    _rewrite(folder, lambda m: m["encoders"]["video"].__setitem__("files", {}))
    with pytest.raises(BundleError, match="lists no graph file"):
        OnnxGrounder.load(folder)
