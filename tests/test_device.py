"""The ``device`` and ``mixed_precision`` parameters: validation, "auto", the CPU path,
CPU-loadable pickles and saves, and (only where CUDA is present) a real GPU fit."""

from __future__ import annotations

import copy
import doctest
import logging
import pickle

import joblib
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY
from sklearn.base import clone

from mgsv_sk import MGSVGrounder
from mgsv_sk.infer import device as device_mod
from mgsv_sk.infer.device import autocast_for, resolve_device, resolve_precision
from mgsv_sk.train._batching import collate
from mgsv_sk.train.fitting import train_config

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
needs_no_cuda = pytest.mark.skipif(CUDA, reason="checks the error of a CPU-only machine")


@pytest.mark.parametrize(
    ("device", "match"),
    [("gpu", "device must be 'cpu', 'cuda', 'cuda:N', 'auto'"),
     (3, "'device' parameter of MGSVGrounder must be an instance of"),
     ("cuda:x", "device must be"),
     ("mps", "device type 'mps' is not supported")],
)
def test_invalid_devices_are_named(small_train, device, match):
    est = MGSVGrounder(features=small_train.features, **{**TINY, "device": device})
    with pytest.raises(ValueError, match=match):
        est.fit(small_train.frame)


@needs_no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda")])
def test_cuda_without_a_gpu_says_how_to_fix_it(small_train, device):
    est = MGSVGrounder(features=small_train.features, **{**TINY, "device": device})
    with pytest.raises(ValueError, match=r"torch.cuda.is_available\(\) is False.*device='cpu'"):
        est.fit(small_train.frame)


@pytest.mark.parametrize(
    ("params", "match"),
    [({"mixed_precision": "half"}, "'mixed_precision' parameter of MGSVGrounder must be"),
     ({"mixed_precision": "fp16"}, "'fp16' needs a CUDA device"),
     ({"bf16": True, "mixed_precision": "fp32"}, "bf16=True contradicts"),
     ({"device": 7, "mixed_precision": "x"},
      "'mixed_precision' parameter.*\n.*'device' parameter")],
)
def test_precision_errors(small_train, params, match):
    est = MGSVGrounder(features=small_train.features, **{**TINY, **params})
    with pytest.raises(ValueError, match=match):
        est.fit(small_train.frame)


def _train_config(est):
    return train_config(est.get_params(), 0, 0.0, None)


def test_defaults_keep_the_cpu_float32_path():
    est = MGSVGrounder(**TINY)
    assert est.get_params()["device"] == "cpu" and est.get_params()["mixed_precision"] == "auto"
    cfg = _train_config(est)
    assert cfg.device == "cpu" and cfg.amp_dtype is None
    # bf16=True is a shorthand for mixed_precision="bf16"
    assert _train_config(MGSVGrounder(bf16=True)).amp_dtype == torch.bfloat16
    assert _train_config(MGSVGrounder(mixed_precision="bf16")).amp_dtype == torch.bfloat16
    twin = clone(MGSVGrounder(device=torch.device("cpu"), mixed_precision="fp32"))
    assert twin.device == torch.device("cpu") and twin.mixed_precision == "fp32"


def test_auto_and_torch_device_give_the_cpu_model(tiny_fitted, small_train):
    """On a CPU-only machine "auto" is the CPU: the same model, bit for bit."""
    if CUDA:
        pytest.skip('"auto" picks the GPU here')
    assert resolve_device("auto") == resolve_device(torch.device("cpu")) == torch.device("cpu")
    est = MGSVGrounder(features=small_train.features, **{**TINY, "device": "auto"})
    est.fit(small_train.frame)
    X = small_train.frame.iloc[:30]
    pd.testing.assert_frame_equal(est.predict(X), tiny_fitted.predict(X))
    np.testing.assert_array_equal(est.decision_function(X), tiny_fitted.decision_function(X))


def test_cuda_resolution_logic_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("CUDA:0") == torch.device("cuda", 0)
    assert resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)  # one GPU per rank
    with pytest.raises(ValueError, match="only 2 CUDA device.*index in \\[0, 2\\)"):
        resolve_device("cuda:5")
    with pytest.raises(ValueError, match="nproc_per_node"):
        resolve_device("cuda", local_rank=3)


@pytest.mark.parametrize(("bf16_ok", "choice", "expected", "scaled"),
                         [(True, "auto", torch.bfloat16, False),
                          (False, "auto", torch.float16, True),
                          (True, "fp16", torch.float16, True),
                          (True, "fp32", None, False)])
def test_cuda_precision_choices(monkeypatch, bf16_ok, choice, expected, scaled):
    monkeypatch.setattr(device_mod, "_cuda_bf16", lambda device: bf16_ok)
    precision = resolve_precision(torch.device("cuda", 0), choice)
    assert precision.dtype == expected and precision.grad_scaling is scaled


def test_bf16_on_an_old_gpu(monkeypatch):
    monkeypatch.setattr(device_mod, "_cuda_bf16", lambda device: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Tesla T4")
    with pytest.raises(ValueError, match="Tesla T4 does not support bfloat16.*'fp16'"):
        resolve_precision(torch.device("cuda", 0), "bf16")
    # inference of a model fitted elsewhere falls back instead of failing
    assert resolve_precision(torch.device("cuda", 0), "bf16", strict=False).dtype is None
    assert resolve_precision(torch.device("cpu"), "fp16", strict=False).dtype is None


def test_autocast_contexts():
    cpu = torch.device("cpu")
    with autocast_for(cpu, None):
        assert not torch.is_autocast_enabled("cpu")
    with autocast_for(cpu, torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    with pytest.raises(TypeError, match="torch dtype or None"):
        autocast_for(cpu, True)  # one representation: a dtype, not a flag


def test_batches_move_to_another_device(small_train):
    rows = np.arange(6)
    batch = collate(rows, small_train.frame["video_id"].tolist(),
                    small_train.frame["music_id"].tolist(), small_train.features,
                    np.full(len(small_train.frame), 20.0), np.zeros((len(small_train.frame), 2),
                                                                     np.float32))
    assert batch.to("cpu") is batch
    moved = batch.to(torch.device("meta"))  # a real device move, no GPU needed
    for name in ("video", "video_mask", "music", "music_mask", "music_index", "video_seconds",
                 "target_cw"):
        assert getattr(moved, name).device.type == "meta", name
    assert moved.music_ids == batch.music_ids and moved.rows is batch.rows


def test_a_gpu_model_pickles_and_loads_on_a_cpu_only_machine(tiny_model, small_train,
                                                              monkeypatch, caplog, tmp_path):
    """A model whose parameters sit on a GPU pickles a CPU copy; unpickled (or loaded)
    where its device is missing, it runs on the CPU with a warning."""
    X = small_train.frame.iloc[:20]
    expected = tiny_model.predict(X)
    import mgsv_sk.estimators.made as estimator_mod

    gpu_device = torch.device("cuda", 0)
    monkeypatch.setattr(estimator_mod, "model_device", lambda model: gpu_device)
    state = tiny_model.__getstate__()
    assert state["model_"] is not tiny_model.model_  # a CPU copy went into the pickle
    assert all(p.device.type == "cpu" for p in state["model_"].parameters())
    monkeypatch.undo()

    tiny_model.set_params(device="cuda")
    if CUDA:
        pytest.skip("this machine has CUDA; the GPU test covers it")
    with caplog.at_level(logging.WARNING, logger="mgsv_sk.estimators.made"):
        back = pickle.loads(pickle.dumps(tiny_model))
        path = tmp_path / "model.joblib"
        joblib.dump(tiny_model, path)
        again = joblib.load(path)
        tiny_model.save(tmp_path / "saved")
        loaded = MGSVGrounder.load(tmp_path / "saved", features=small_train.features)
    assert "running the model on the CPU" in caplog.text
    for est in (back, again, loaded, copy.deepcopy(tiny_model)):
        assert next(est.model_.parameters()).device.type == "cpu"
        pd.testing.assert_frame_equal(est.predict(X), expected, atol=1e-6)


@needs_cuda
def test_real_gpu_fit_matches_the_cpu(small_train, small_test, tmp_path):
    """A float32 fit on CUDA (dropout off) agrees with the CPU fit; mixed precision runs;
    the model pickles with CPU weights and saves/loads back onto the GPU."""
    params = {**TINY, "temporal_dropout": 0.0, "detector_dropout": 0.0, "max_epochs": 2,
              "mixed_precision": "fp32"}
    cpu = MGSVGrounder(features=small_train.features, **params).fit(small_train.frame)
    gpu = MGSVGrounder(features=small_train.features, **{**params, "device": "cuda"})
    gpu.fit(small_train.frame)
    assert next(gpu.model_.parameters()).device.type == "cuda"
    X = small_test.frame
    p_cpu = cpu.predict(X, features=small_test.features)
    p_gpu = gpu.predict(X, features=small_test.features)
    assert isinstance(p_gpu["start"].to_numpy(), np.ndarray)
    assert np.abs(p_gpu["start"] - p_cpu["start"]).max() < 2.0  # seconds of a 240 s range
    assert np.abs(p_gpu["end"] - p_cpu["end"]).max() < 2.0
    np.testing.assert_allclose(p_gpu["score"], p_cpu["score"], atol=0.02)
    np.testing.assert_allclose(gpu.history_[-1]["train_total"],
                               cpu.history_[-1]["train_total"], rtol=0.02)

    mixed = MGSVGrounder(features=small_train.features, **{**TINY, "device": "cuda"})
    mixed.fit(small_train.frame)  # bf16 or fp16 + GradScaler, whichever the GPU supports
    pred = mixed.predict(X, features=small_test.features)
    assert np.isfinite(pred[["start", "end", "score", "moment_score"]].to_numpy()).all()

    state = gpu.__getstate__()
    assert all(p.device.type == "cpu" for p in state["model_"].parameters())
    back = pickle.loads(pickle.dumps(gpu))
    assert next(back.model_.parameters()).device.type == "cuda"
    gpu.save(tmp_path / "saved")
    loaded = MGSVGrounder.load(tmp_path / "saved", features=small_train.features)
    assert next(loaded.model_.parameters()).device.type == "cuda"
    for est in (back, loaded):
        pd.testing.assert_frame_equal(est.predict(X, features=small_test.features), p_gpu,
                                      atol=1e-5)


def test_a_torch_device_parameter_survives_save_and_load(tiny_model, small_train, tmp_path):
    tiny_model.set_params(device=torch.device("cpu"))
    tiny_model.save(tmp_path / "saved")
    loaded = MGSVGrounder.load(tmp_path / "saved", features=small_train.features)
    assert loaded.device == "cpu" and loaded.mixed_precision == "auto"


def test_device_module_doctests():
    assert doctest.testmod(device_mod).failed == 0
