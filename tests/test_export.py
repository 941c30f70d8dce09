"""ONNX export and the torch-free runtime: parity with the estimator, bundle integrity,
thread safety, errors. One tiny bundle per session (exported in ~2 s)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from conftest import TINY

from mgsv_sk.export.manifest import BundleError, read_manifest
from mgsv_sk.export.runtime import FeatureError, OnnxGrounder
from mgsv_sk.export.to_onnx import export_onnx

ROOT = Path(__file__).resolve().parents[1]
NUMERIC = ["start", "end", "score", "moment_score"]
TOL = 1e-4


@pytest.fixture(scope="module")
def bundle(tiny_fitted, tmp_path_factory):
    return export_onnx(tiny_fitted, tmp_path_factory.mktemp("onnx") / "bundle", quantize=True)


@pytest.fixture(scope="module")
def served(bundle, small_train):
    return OnnxGrounder.load(bundle, 1, features=small_train.features, precision="fp32")


def assert_same_predictions(torch_out: pd.DataFrame, ort_out: pd.DataFrame) -> None:
    assert list(ort_out.columns) == list(torch_out.columns)
    assert ort_out.index.equals(torch_out.index)
    assert (ort_out.dtypes == torch_out.dtypes).all()
    assert ort_out["music_id"].tolist() == torch_out["music_id"].tolist()
    diff = np.abs(ort_out[NUMERIC].to_numpy() - torch_out[NUMERIC].to_numpy())
    assert diff.max() <= TOL, dict(zip(NUMERIC, diff.max(axis=0)))


# -- the bundle --------------------------------------------------------------------------------
def test_bundle_layout_and_manifest(bundle, tiny_fitted):
    manifest = read_manifest(bundle)
    assert set(manifest["graphs"]) == {"video_encoder", "music_encoder", "score_tracks",
                                       "score_pairs", "detector"}
    assert manifest["dims"]["d_model"] == tiny_fitted.model_.cfg.d_model
    assert manifest["constants"]["max_music_seconds"] == 240.0
    assert manifest["constants"]["snippet_hop_seconds"] == 2.5
    assert manifest["retrieval"]["xpool_top_k"] == tiny_fitted.xpool_top_k
    assert manifest["catalogue"]["n_tracks"] == len(tiny_fitted.catalogue_ids_)
    assert {"torch", "onnx", "onnxruntime", "mgsv_sk"} <= set(manifest["versions"])
    assert manifest["opset"] == 20
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == on_disk - {"manifest.json"}
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())
    ids = json.loads((bundle / "catalogue/ids.json").read_text())
    assert ids == tiny_fitted.catalogue_ids_
    tokens = np.load(bundle / "catalogue/tokens.npy", mmap_mode="r", allow_pickle=False)
    assert tokens.dtype == np.float32 and tokens.shape[0] == manifest["catalogue"]["n_snippets"]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_saved_graphs_have_symbolic_axes(bundle, precision):
    manifest = read_manifest(bundle)
    for name, graph in manifest["graphs"].items():
        model = onnx.load(bundle / graph["files"][precision])
        values = {v.name: v for v in list(model.graph.input) + list(model.graph.output)}
        for tensor in graph["inputs"] + graph["outputs"]:
            dims = values[tensor["name"]].type.tensor_type.shape.dim
            for axis, want in zip(dims, tensor["shape"]):
                if isinstance(want, str):
                    assert axis.dim_param == want, (name, tensor["name"], axis)
                else:
                    assert axis.dim_value == want, (name, tensor["name"], axis)
        batch_axes = [t["shape"][0] for t in graph["inputs"]]
        assert {"batch", "tracks"} & set(batch_axes)


# -- parity with the estimator ---------------------------------------------------------------------
@pytest.mark.parametrize("rows", [slice(0, 1), slice(0, 37)], ids=["batch1", "batch37"])
@pytest.mark.parametrize("mode", ["smg", "msg"])
def test_predict_parity(tiny_fitted, served, small_train, rows, mode):
    X = small_train.frame.iloc[rows]
    if mode == "msg":
        X = X.drop(columns="music_id")
    lengths = {len(small_train.features.video(v)) for v in X["video_id"]}
    assert rows.stop == 1 or len(lengths) > 5  # variable numbers of valid frames
    assert_same_predictions(tiny_fitted.predict(X), served.predict(X))


def test_smg_on_tracks_outside_the_catalogue(tiny_fitted, served, small_test):
    X = small_test.frame
    snippets = {len(small_test.features.music(m)) for m in X["music_id"]}
    assert len(snippets) > 10  # variable numbers of valid snippets
    assert_same_predictions(tiny_fitted.predict(X, features=small_test.features),
                            served.predict(X, features=small_test.features))


def test_rank_parity(tiny_fitted, served, small_train):
    X = small_train.frame.iloc[:20].drop(columns="music_id")
    want, got = tiny_fitted.rank(X, k=5), served.rank(X, k=5)
    assert list(got.columns) == list(want.columns) and (got.dtypes == want.dtypes).all()
    assert got[["video_id", "rank", "music_id"]].equals(want[["video_id", "rank", "music_id"]])
    cols = ["score", "start", "end", "moment_score"]
    assert np.abs(got[cols].to_numpy() - want[cols].to_numpy()).max() <= TOL


def assert_same_windows(want: pd.DataFrame, got: pd.DataFrame) -> None:
    """Every moment of every row: same count and order, spans within TOL seconds."""
    assert [len(w) for w in got["windows"]] == [len(w) for w in want["windows"]]
    for a, b in zip(want["windows"], got["windows"]):
        assert np.abs(np.array(a) - np.array(b)).max() <= TOL


@pytest.mark.parametrize("mode", ["smg", "msg"])
def test_several_moments_per_track_parity(tiny_fitted, served, small_test, mode):
    X = small_test.frame.iloc[:30]
    X = X if mode == "smg" else X.drop(columns="music_id")
    want = tiny_fitted.predict(X, features=small_test.features, moments_per_track=4)
    got = served.predict(X, features=small_test.features, moments_per_track=4)
    assert_same_predictions(want.drop(columns="windows"), got.drop(columns="windows"))
    assert max(len(w) for w in want["windows"]) == 4  # several moments really compared
    assert_same_windows(want, got)
    X = small_test.frame.iloc[:10].drop(columns="music_id")
    want = tiny_fitted.rank(X, k=3, features=small_test.features, moments_per_track=3)
    got = served.rank(X, k=3, features=small_test.features, moments_per_track=3)
    assert got[["video_id", "rank", "music_id"]].equals(want[["video_id", "rank", "music_id"]])
    assert_same_windows(want, got)


def test_detr_head_exports_with_parity(small_train, tmp_path):
    from mgsv_sk import MGSVGrounder

    model = MGSVGrounder(features=small_train.features, detector="detr",
                         **{**TINY, "max_epochs": 1}).fit(small_train.frame)
    bundle = export_onnx(model, tmp_path / "bundle")
    served = OnnxGrounder.load(bundle, 1, features=small_train.features)
    X = small_train.frame.iloc[:25]
    assert_same_predictions(model.predict(X), served.predict(X))
    want, got = (g.predict(X, moments_per_track=2) for g in (model, served))
    assert all(len(w) == 1 for w in want["windows"])  # one query, one moment
    assert_same_windows(want, got)
    # pairs that index their videos read each pair's video, as pairs given video by video
    import torch

    net = model.model_.eval()
    with torch.no_grad():
        v = net.encode_video(torch.randn(2, 5, net.cfg.video_dim), torch.ones(2, 5, dtype=bool))
        m = net.encode_music(torch.randn(2, 7, net.cfg.music_dim), torch.ones(2, 7, dtype=bool))
        indexed = net.ground(v, m, torch.tensor([1, 0, 1]), None, torch.tensor([1, 1, 0]))
        flat = net.ground(type(v)(*(t[[1, 1, 0]] for t in v)), m, torch.tensor([1, 0, 1]))
    np.testing.assert_allclose(indexed.logits, flat.logits, atol=1e-6)


def test_repeated_rows_are_answered_row_by_row_in_both_backends(tiny_fitted, served,
                                                               small_train):
    X = small_train.frame.iloc[[3, 4, 3, 3, 5]].set_index(pd.Index([7, 8, 7, 9, 9]))
    for query in (X, X.drop(columns="music_id")):
        want, got = tiny_fitted.predict(query), served.predict(query)
        assert len(want) == len(got) == 5 and want.index.equals(query.index)
        assert_same_predictions(want, got)


def test_decision_function_parity(tiny_fitted, served, small_test):
    X, gallery = small_test.frame, small_test.frame["music_id"].unique()
    want = tiny_fitted.decision_function(X, features=small_test.features, music_ids=gallery)
    got = served.decision_function(X, features=small_test.features, music_ids=gallery)
    assert got.shape == want.shape and np.abs(got - want).max() <= TOL
    assert (np.argsort(-got, axis=1, kind="stable")[:, :10]
            == np.argsort(-want, axis=1, kind="stable")[:, :10]).all()


def test_two_stage_parity(tiny_model, bundle, small_train):
    tiny_model.set_params(xpool_top_k=4)
    served = OnnxGrounder.load(bundle, 1, features=small_train.features, precision="fp32")
    served.xpool_top_k = 4
    X = small_train.frame.iloc[:30]
    want, got = tiny_model.decision_function(X), served.decision_function(X)
    assert np.abs(got - want).max() <= TOL
    assert_same_predictions(tiny_model.predict(X.drop(columns="music_id")),
                            served.predict(X.drop(columns="music_id")))


def test_add_tracks_matches_a_bigger_catalogue(tiny_model, bundle, small_train, small_test):
    from mgsv_sk import InMemoryFeatures

    feats = InMemoryFeatures(
        {v: small_train.features.video(v) for v in small_train.features.video_ids()},
        {**{m: small_train.features.music(m) for m in small_train.features.music_ids()},
         **{m: small_test.features.music(m) for m in small_test.features.music_ids()}})
    new = list(small_test.frame["music_id"].unique()[:25])
    served = OnnxGrounder.load(bundle, 1, features=feats, precision="fp32")
    served.add_tracks(new)
    assert served.catalogue_ids_ == tiny_model.catalogue_ids_ + new
    tiny_model.set_catalogue(tiny_model.catalogue_ids_ + new, features=feats)
    X = small_train.frame.iloc[:30].drop(columns="music_id")
    assert_same_predictions(tiny_model.predict(X, features=feats), served.predict(X))
    with pytest.raises(ValueError, match="already in the catalogue"):
        served.add_tracks(new[:2])


def test_int8_graphs_serve(bundle, served, small_test):
    int8 = OnnxGrounder.load(bundle, 1, features=small_test.features)
    assert int8.precision == "int8"  # the bundle's default when exported with quantize=True
    X = small_test.frame.iloc[:20]  # tracks outside the catalogue: int8 music encoder too
    a, b = int8.predict(X), served.predict(X, features=small_test.features)
    assert list(a.columns) == list(b.columns) and np.isfinite(a[NUMERIC].to_numpy()).all()
    assert np.abs(a["start"] - b["start"]).median() < 5.0  # seconds; accuracy: benchmarks/


# -- deployment properties ------------------------------------------------------------------------
def test_runtime_never_imports_torch(bundle, small_test, tiny_fitted, tmp_path):
    # The runtime shares mgsv_sk's torch-free code (window selection, schema) but must run
    # where torch is not installed.
    from mgsv_sk import pack_features

    packed = pack_features(small_test.features, tmp_path / "packed",
                           annotations=small_test.frame)
    X = small_test.frame.iloc[:12]
    X.to_csv(tmp_path / "X.csv", index=False)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None
        sys.path.insert(0, {str(ROOT)!r})
        import pandas as pd
        from mgsv_sk.export.runtime import OnnxGrounder
        X = pd.read_csv({str(tmp_path / "X.csv")!r}, dtype={{"video_id": str, "music_id": str}})
        g = OnnxGrounder.load({str(bundle)!r}, 1, precision="fp32")
        out = g.predict(X, features={str(packed.path)!r})
        out.to_json({str(tmp_path / "out.json")!r}, orient="split", double_precision=15)
        assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, timeout=120)
    got = pd.read_json(tmp_path / "out.json", orient="split", dtype={"music_id": str})
    want = tiny_fitted.predict(X, features=small_test.features)
    assert got["music_id"].tolist() == want["music_id"].tolist()
    assert np.abs(got[NUMERIC].to_numpy() - want[NUMERIC].to_numpy()).max() <= TOL


def test_tampered_bundle_is_refused(bundle, tmp_path):
    for victim in ("graphs/detector.onnx", "catalogue/emb.npy"):
        copy_ = tmp_path / victim.replace("/", "_")
        shutil.copytree(bundle, copy_)
        data = bytearray((copy_ / victim).read_bytes())
        data[-1] ^= 0xFF  # same size, other bytes
        (copy_ / victim).write_bytes(bytes(data))
        with pytest.raises(BundleError, match=victim.split("/")[-1]):
            OnnxGrounder.load(copy_)
    extra = tmp_path / "extra"
    shutil.copytree(bundle, extra)
    (extra / "graphs" / "evil.onnx").write_bytes(b"x")
    with pytest.raises(BundleError, match="evil.onnx"):
        OnnxGrounder.load(extra)
    with pytest.raises(FileNotFoundError, match="manifest"):
        OnnxGrounder.load(tmp_path)


def test_failed_export_leaves_nothing(tiny_fitted, tmp_path, monkeypatch):
    import mgsv_sk.export.to_onnx as to_onnx

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(to_onnx, "_write_catalogue", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        export_onnx(tiny_fitted, tmp_path / "bundle")
    assert list(tmp_path.iterdir()) == []


def test_export_arguments(tiny_fitted, bundle):
    with pytest.raises(FileExistsError, match="overwrite"):
        export_onnx(tiny_fitted, bundle)
    with pytest.raises(ValueError, match="opset"):
        export_onnx(tiny_fitted, bundle.parent / "other", opset=21)
    from mgsv_sk import MGSVGrounder

    with pytest.raises(ValueError, match="fitted"):
        export_onnx(MGSVGrounder(), bundle.parent / "other")


def test_cli_exports_a_saved_model(tiny_fitted, tmp_path):
    from mgsv_sk.export.__main__ import main

    tiny_fitted.save(tmp_path / "model")
    assert main([str(tmp_path / "model"), str(tmp_path / "bundle"), "--no-check"]) == 0
    assert read_manifest(tmp_path / "bundle")["default_precision"] == "fp32"
    assert read_manifest(tmp_path / "bundle")["catalogue"].get("states", "float32") == "float32"
    # a compact catalogue from the command line, served as any other
    assert main([str(tmp_path / "model"), str(tmp_path / "half"), "--no-check",
                 "--states", "float16", "--index", "exact"]) == 0
    assert read_manifest(tmp_path / "half")["catalogue"]["states"] == "float16"
    assert OnnxGrounder.load(tmp_path / "half", 1)._catalogue.compact


def test_threads_give_the_serial_results(served, small_train):
    frames = [small_train.frame.iloc[i: i + 9] for i in range(0, 72, 9)]
    frames = [f if i % 2 else f.drop(columns="music_id") for i, f in enumerate(frames)]
    serial = [served.predict(f) for f in frames]
    results: list[pd.DataFrame | None] = [None] * len(frames)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(frames))

    def work(i: int) -> None:
        try:
            barrier.wait()
            results[i] = served.predict(frames[i])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(frames))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for want, got in zip(serial, results):
        pd.testing.assert_frame_equal(got, want)


def test_sessions_are_not_pickled(served):
    import pickle

    with pytest.raises(TypeError, match="load the bundle again"):
        pickle.dumps(served)


# -- errors --------------------------------------------------------------------------------------
def test_clear_errors(served, small_train):
    X = small_train.frame.iloc[:3]
    with pytest.raises(ValueError, match="video_id"):
        served.predict(X.drop(columns="video_id"))
    with pytest.raises(TypeError, match="DataFrame"):
        served.predict(X.to_dict())
    with pytest.raises(FeatureError, match="nope"):
        served.predict(X.assign(music_id=["nope", "nope", X["music_id"].iloc[2]]))
    with pytest.raises(FeatureError, match=r"no features for 3 video\(s\)"):
        served.predict(X.assign(video_id="ghost"))
    with pytest.raises(ValueError, match="k must be"):
        served.rank(X, k=0)
    vid = X["video_id"].iloc[0]
    good = small_train.features.video(vid)
    bad_cases = {
        "shape": np.zeros((5, 300), np.float32),
        "NaN": np.where(np.arange(512) == 3, np.nan, good[:4]),
        "rows": np.zeros((0, 512), np.float32),
        "more than the 50": np.ones((51, 512), np.float32),
    }
    for message, array in bad_cases.items():
        feats = ({vid: array}, {})
        with pytest.raises(FeatureError, match=message):
            served.predict(X.iloc[:1].drop(columns="music_id"), features=feats)


def test_dict_features_are_accepted(tiny_fitted, bundle, small_train):
    X = small_train.frame.iloc[:5]
    feats = ({v: small_train.features.video(v) for v in X["video_id"]},
             {m: small_train.features.music(m) for m in X["music_id"]})
    served = OnnxGrounder.load(bundle, 1, precision="fp32")
    with pytest.raises(ValueError, match="no features given"):
        served.predict(X)
    assert_same_predictions(tiny_fitted.predict(X), served.predict(X, features=feats))


@pytest.mark.parametrize("scores", [("dual",), ("xpool",)])
def test_single_score_models(scores, small_train, tmp_path):
    from mgsv_sk import MGSVGrounder

    model = MGSVGrounder(features=small_train.features, retrieval_scores=scores,
                         **{**TINY, "max_epochs": 1}).fit(small_train.frame)
    bundle = export_onnx(model, tmp_path / "bundle")
    graphs = set(read_manifest(bundle)["graphs"])
    assert ("score_tracks" in graphs) == ("xpool" in scores)
    served = OnnxGrounder.load(bundle, 1, features=small_train.features)
    X = small_train.frame.iloc[:15]
    assert_same_predictions(model.predict(X), served.predict(X))
    X = X.drop(columns="music_id")
    assert_same_predictions(model.predict(X), served.predict(X))


def test_numpy_xpool_equals_the_score_graphs(bundle, served, small_test):
    """The float32 runtime scores X-Pool in numpy and compiled kernels (export._xpool); the
    bundle's graphs compute the same scores, chunk by chunk and pair by pair, and the same
    answers."""
    from mgsv_sk.export._xpool import _KERNEL_VIDEOS
    from mgsv_sk.export.runtime import _OrtXPool

    assert served.numpy_xpool is not None
    assert OnnxGrounder.load(bundle, 1, precision="int8").numpy_xpool is None
    cat = served._served_catalogue()
    source = served._source(small_test.features)
    most = _KERNEL_VIDEOS + 1
    emb = served._encode_videos(small_test.frame.iloc[:most], source).emb
    assert len(emb) == most
    graphs = _OrtXPool(served)
    for b in (1, 7, most):  # the compiled one-pass pooling, then (past it) the GEMMs
        for chunk in cat.chunks(5):
            np.testing.assert_allclose(served.numpy_xpool.tracks(emb[:b], chunk),
                                       graphs.tracks(emb[:b], chunk), atol=1e-5)
        chunks = cat.chunks(5)
        by_chunk = np.zeros((b, len(cat)), np.float32)
        for chunk in chunks:
            by_chunk[:, chunk.rows] = graphs.tracks(emb[:b], chunk)
        np.testing.assert_allclose(served.numpy_xpool.scan(emb[:b], chunks, len(cat)),
                                   by_chunk, atol=1e-5)
    rows = np.arange(len(emb)) * 3 % len(cat)
    np.testing.assert_allclose(served.numpy_xpool.pairs(emb, rows, cat),
                               graphs.pairs(emb, rows, cat), atol=1e-5)
    by_graphs = OnnxGrounder.load(bundle, 1, precision="fp32")
    by_graphs.numpy_xpool = None
    X = small_test.frame.iloc[:12].drop(columns="music_id")
    assert_same_predictions(by_graphs.predict(X, features=small_test.features),
                            served.predict(X, features=small_test.features))
    assert_same_predictions(by_graphs.rank(X, k=5, features=small_test.features),
                            served.rank(X, k=5, features=small_test.features))


def test_the_window_head_grounds_each_video_once_across_its_tracks(bundle, served, tiny_fitted,
                                                                   small_train, monkeypatch):
    # the graph takes each video once and pairs it with tracks by video_index: one MsG
    # query re-ranked over several tracks projects its frames once, not once a track
    spec = read_manifest(bundle)["graphs"]["detector"]
    names = [t["name"] for t in spec["inputs"]]
    assert names[-2:] == ["video_index", "video_seconds"]
    calls = []
    run = served._run

    def spy(graph, **arrays):
        if graph == "detector":
            calls.append((len(arrays["video_tokens"]), len(arrays["video_index"])))
        return run(graph, **arrays)

    monkeypatch.setattr(served, "_run", spy)
    X = small_train.frame.iloc[:2].drop(columns="music_id")
    got = served.rank(X, k=5, moments_per_track=1)
    assert calls and all(videos < pairs for videos, pairs in calls)
    want = tiny_fitted.rank(X, k=5, moments_per_track=1)
    assert got["music_id"].tolist() == want["music_id"].tolist()
    np.testing.assert_allclose(got["start"].to_numpy(float), want["start"].to_numpy(float),
                               atol=TOL)


def test_the_catalogue_holds_the_window_heads_track_keys(bundle, served, tiny_fitted,
                                                         small_train, tmp_path, monkeypatch):
    # a window-head bundle stores what the head reads of each track (computed once at
    # export) where it stored tokens, and its detector takes them; a bundle exported before
    # (tokens, projected by its detector graph at every request) is served as it was
    import torch

    from mgsv_sk.export import _graphs, to_onnx

    manifest = read_manifest(bundle)
    d = manifest["dims"]["d_model"]
    names = [t["name"] for t in manifest["graphs"]["detector"]["inputs"]]
    assert "music_keys" in names and "music_tokens" not in names
    rows = np.load(bundle / "catalogue" / "tokens.npy")
    assert rows.shape[1] == d + 4
    cat = tiny_fitted.catalogue_
    _, tokens, _, _ = cat.arrays()
    model = tiny_fitted.model_.cpu().eval()
    with torch.no_grad():
        keys = model.detector.track_keys(torch.from_numpy(tokens[None]))[0].numpy()
    np.testing.assert_allclose(rows, keys, atol=1e-5)

    monkeypatch.setattr(_graphs, "_keyed", lambda model: False)
    monkeypatch.setattr(to_onnx, "_keyed", lambda model: False)
    before = export_onnx(tiny_fitted, tmp_path / "before")
    old = read_manifest(before)
    assert "music_tokens" in [t["name"] for t in old["graphs"]["detector"]["inputs"]]
    assert np.load(before / "catalogue" / "tokens.npy").shape[1] == d
    old_served = OnnxGrounder.load(before, 1, features=small_train.features)
    X = small_train.frame.iloc[:8].drop(columns="music_id")
    got, want = old_served.rank(X, k=5), served.rank(X, k=5)
    assert got["music_id"].tolist() == want["music_id"].tolist()
    for column in ("start", "end", "moment_score"):
        np.testing.assert_allclose(got[column].to_numpy(float), want[column].to_numpy(float),
                                   atol=TOL)


def test_ground_checks_its_pair_indices(tiny_fitted, small_train):
    import torch

    model = tiny_fitted.model_.eval()
    video = torch.randn(2, 5, model.cfg.video_dim)
    music = torch.randn(3, 7, model.cfg.music_dim)
    with torch.no_grad():
        v = model.encode_video(video, torch.ones(2, 5, dtype=torch.bool))
        m = model.encode_music(music, torch.ones(3, 7, dtype=torch.bool))
        pairs = model.ground(v, m, torch.tensor([0, 2, 1, 2]), None,
                             torch.tensor([0, 0, 1, 1]))
        assert pairs.logits.shape[0] == 4
        alone = model.ground(v, m, torch.tensor([2, 1]))  # pair p is video p
        np.testing.assert_allclose(alone.logits[0], pairs.logits[1], atol=1e-5)
        with pytest.raises(ValueError, match=r"video_index values must lie in \[0, 2\)"):
            model.ground(v, m, torch.tensor([0, 1]), None, torch.tensor([0, 2]))
        with pytest.raises(ValueError, match=r"music_index must be a long tensor of shape \(3,\)"):
            model.ground(v, m, torch.tensor([0, 1]), None, torch.tensor([0, 1, 1]))
