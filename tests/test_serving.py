"""The runtime path where torch is not installed: open a bundle, read packed features,
predict (SmG, MsG) and rank, matching the torch backend's outputs.

In the full environment the fixture is built here (torch available); in CI's torch-free
environment it comes from ``MGSV_SERVING_FIXTURE``, built beforehand by
``tests/serving_fixture.py``, and every test of this file runs without torch.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

NUMERIC = ["score", "start", "end", "moment_score"]
IDS = {"video_id": str, "music_id": str}


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory) -> Path:
    given = os.environ.get("MGSV_SERVING_FIXTURE")
    if given:
        return Path(given)
    if importlib.util.find_spec("torch") is None:
        pytest.skip("no MGSV_SERVING_FIXTURE and no torch to build one")
    sys.path.insert(0, str(Path(__file__).parent))
    from serving_fixture import build

    return build(tmp_path_factory.mktemp("serving"))


@pytest.fixture(scope="module")
def served(fixture_dir):
    from mgsv_sk.export.runtime import OnnxGrounder

    return OnnxGrounder.load(fixture_dir / "bundle", 1, features=str(fixture_dir / "packed"))


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=IDS)


@pytest.mark.parametrize("mode", ["smg", "msg"])
def test_predict_matches_the_torch_backend(served, fixture_dir, mode):
    X = _read(fixture_dir / "X.csv")
    X = X if mode == "smg" else X.drop(columns="music_id")
    want, got = _read(fixture_dir / f"{mode}.csv"), served.predict(X)
    assert got["music_id"].tolist() == want["music_id"].tolist()
    assert np.abs(got[NUMERIC].to_numpy() - want[NUMERIC].to_numpy()).max() <= 1e-4


def test_rank_matches_the_torch_backend(served, fixture_dir):
    X = _read(fixture_dir / "X.csv").drop(columns="music_id")
    want, got = _read(fixture_dir / "rank.csv"), served.rank(X, k=3)
    assert got[["video_id", "rank", "music_id"]].equals(want[["video_id", "rank", "music_id"]])
    assert np.abs(got[NUMERIC].to_numpy() - want[NUMERIC].to_numpy()).max() <= 1e-4


def test_serving_never_imports_torch(served, fixture_dir):
    served.predict(_read(fixture_dir / "X.csv").iloc[:2])
    if os.environ.get("MGSV_SERVING_FIXTURE"):
        assert importlib.util.find_spec("torch") is None, "the serving env must lack torch"
    assert "torch" not in sys.modules or "mgsv_sk.estimators.made" in sys.modules
