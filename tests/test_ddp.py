"""Data-parallel training: batch sharding, a one-process group in-process, and two gloo
processes launched by torchrun running examples/train_ddp.py."""

from __future__ import annotations

import doctest
import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch.distributed as dist
from conftest import TINY

from mgsv_sk import MGSVGrounder, evaluate, make_synthetic_mgsv
from mgsv_sk.train.distributed import current, data_fingerprint, is_main_process, shard_batches

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


@pytest.mark.parametrize("n_batches", [1, 2, 5, 8, 11])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_cover_every_batch_with_equal_step_counts(n_batches, world):
    batches = list(range(n_batches))
    shards = [shard_batches(batches, r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # no rank waits for another at a step
    assert len(shards[0]) == -(-n_batches // world)
    assert sorted(set().union(*shards)) == batches  # every batch is trained on
    if n_batches % world == 0:  # no padding needed: disjoint shards
        assert sorted(b for s in shards for b in s) == batches


def test_shard_rank_is_validated_and_fingerprint_sees_order():
    with pytest.raises(ValueError, match="rank must be in"):
        shard_batches([1, 2], 2, 2)
    assert data_fingerprint(["a", "b"]) != data_fingerprint(["b", "a"])
    assert data_fingerprint(["a"], ["b"]) != data_fingerprint(["a", "b"])
    assert current() is None and is_main_process()


def test_one_process_group_trains_like_a_plain_fit(tiny_fitted, small_train, tmp_path):
    """The DDP code path (wrapper, sharding, broadcasts) with world size 1 is exact."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        assert current() is not None and current().world_size == 1
        model = MGSVGrounder(features=small_train.features, **TINY).fit(small_train.frame)
    finally:
        dist.destroy_process_group()
    X = small_train.frame.iloc[:40]
    pd.testing.assert_frame_equal(model.predict(X), tiny_fitted.predict(X))
    drop = ["seconds"]
    assert ([{k: v for k, v in r.items() if k not in drop} for r in model.history_]
            == [{k: v for k, v in r.items() if k not in drop} for r in tiny_fitted.history_])
    assert model.model_.training is False and not hasattr(model.model_, "module")


def test_nccl_group_with_a_cpu_device_is_refused(small_train, monkeypatch):
    from mgsv_sk.train import distributed

    monkeypatch.setattr(distributed, "current",
                        lambda: distributed.DistContext(0, 2, 0, "nccl"))
    with pytest.raises(ValueError, match="nccl backend, which needs CUDA.*backend='gloo'"):
        MGSVGrounder(features=small_train.features, **TINY).fit(small_train.frame)


def _torchrun() -> list[str]:
    exe = shutil.which("torchrun")
    return [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]


def test_two_gloo_processes_under_torchrun(tmp_path, small_train):
    out = tmp_path / "run"
    cmd = _torchrun() + [
        "--standalone", "--nproc_per_node", "2", str(ROOT / "examples" / "train_ddp.py"),
        "--out", str(out), "--videos", "120", "--tracks", "30", "--test-videos", "30",
        "--d-model", "32", "--epochs", "3", "--batch-size", "16", "--device", "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "trained on 2 process(es)" in proc.stdout

    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world_size"] for r in ranks} == {2}
    # identical weights, history, early-stopping outcome and predictions on both ranks
    for key in ("weights_sha256", "train_total", "n_epochs", "best_epoch", "start", "end"):
        assert ranks[0][key] == ranks[1][key], key
    assert ranks[0]["train_total"][-1] < 0.6 * ranks[0]["train_total"][0]

    # rank 0's saved model (CPU weights) is the model every rank ended with
    model = MGSVGrounder.load(out / "model", features=small_train.features)
    weights_sha256 = runpy.run_path(str(ROOT / "examples" / "train_ddp.py"))["weights_sha256"]
    assert weights_sha256(model) == ranks[1]["weights_sha256"]
    test = make_synthetic_mgsv(30, 30, random_state=1, split="test")
    pred = model.predict(test.frame, features=test.features)
    np.testing.assert_allclose(pred["start"], ranks[1]["start"], atol=1e-4)
    np.testing.assert_allclose(pred["end"], ranks[1]["end"], atol=1e-4)
    # it learnt: retrieval on its training tracks far above chance (MRR ~0.1 untrained)
    assert evaluate(model, small_train.frame, grounding=False)["MRR"] > 0.25


def test_distributed_module_doctests():
    from mgsv_sk.train import distributed

    assert doctest.testmod(distributed).failed == 0
