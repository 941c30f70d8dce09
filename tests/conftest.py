"""Shared fixtures: tiny seeded synthetic splits, made once per session."""

from __future__ import annotations

import copy
import os

import pytest

from mgsv_sk.data.synthetic import make_synthetic_mgsv


@pytest.fixture(scope="session")
def small_train():
    """120 videos over 30 tracks, in memory."""
    return make_synthetic_mgsv(120, 30, random_state=0)


@pytest.fixture(scope="session")
def small_test():
    """60 videos over 60 distinct tracks (a val/test-style split), in memory."""
    return make_synthetic_mgsv(60, 60, random_state=1, split="test")


@pytest.fixture(scope="session")
def release_tree(tmp_path_factory):
    """A split written in the MGSV-EC release layout (CSV + .pt tree)."""
    root = tmp_path_factory.mktemp("release")
    return make_synthetic_mgsv(24, 8, random_state=3, path=root)


@pytest.fixture
def frame_copy(small_train):
    return copy.deepcopy(small_train.frame)


#: A tiny MaDe that trains in a couple of seconds on 2 cores.
TINY = dict(
    d_model=32, n_heads=2, encoder_layers=1, decoder_layers=2, temporal_dropout=0.1,
    batch_size=32, max_epochs=3, patience=2, lr=1e-3, random_state=0, n_threads=1,
)


@pytest.fixture(scope="session")
def tiny_fitted(small_train):
    """A fitted tiny MGSVGrounder (session-scoped; deepcopy before mutating)."""
    from mgsv_sk import MGSVGrounder

    return MGSVGrounder(features=small_train.features, **TINY).fit(small_train.frame)


@pytest.fixture
def tiny_model(tiny_fitted):
    return copy.deepcopy(tiny_fitted)


@pytest.fixture(scope="session")
def exported_bundle(tiny_fitted, tmp_path_factory):
    """``tiny_fitted`` exported once per session (read-only: copy it before changing it)."""
    from mgsv_sk.export.to_onnx import export_onnx

    return export_onnx(tiny_fitted, tmp_path_factory.mktemp("exported") / "bundle")


@pytest.fixture(params=["torch", "onnx"])
def grounder(request, tiny_fitted, small_train):
    """Both backends of one fitted model: the torch estimator and the onnxruntime runtime
    serving the ``bundle`` fixture of the requesting module (its exported bundle)."""
    if request.param == "torch":
        return copy.deepcopy(tiny_fitted)
    from mgsv_sk.export.runtime import OnnxGrounder

    return OnnxGrounder.load(request.getfixturevalue("bundle"), 1,
                             features=small_train.features, precision="fp32")


# Budgets of the generated (hypothesis) tests, picked with HYPOTHESIS_PROFILE (docs/
# reliability.md): "ci" (the default) is derandomised and small, so `.ci/run` sees the same
# examples on every run and stays well inside its limit; "deep" searches far longer.
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci", derandomize=True, max_examples=12, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                           HealthCheck.data_too_large])
settings.register_profile(
    "deep", max_examples=400, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                           HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
