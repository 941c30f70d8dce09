"""The model a fit returns: the weight average at the kept epoch, whatever epoch that is,
named by ``history_`` and ``returned_weights_``; the learning rate no longer depends on
``max_epochs`` under the default schedule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY

from mgsv_sk import MGSVGrounder, evaluate
from mgsv_sk.train import _training
from mgsv_sk.train._averaging import WeightAverage


def test_the_average_is_the_uniform_mean_then_an_ema():
    net = torch.nn.Linear(3, 1, bias=False)
    avg = WeightAverage(net, halflife_steps=2.0)
    decay = 0.5 ** 0.5
    seen, expected = [], None
    for step in range(1, 7):
        with torch.no_grad():
            net.weight.fill_(float(step))
        avg.update()
        seen.append(float(step))
        d = min(decay, 1 - 1 / step)
        expected = seen[0] if step == 1 else d * expected + (1 - d) * step
    assert expected is not None
    avg.swap()  # the average is in the model now, the live weights kept aside
    assert torch.allclose(net.weight, torch.full_like(net.weight, expected))
    avg.swap()
    assert torch.allclose(net.weight, torch.full_like(net.weight, 6.0))
    with pytest.raises(ValueError, match="halflife"):
        WeightAverage(net, 0)


def test_the_constant_schedule_does_not_depend_on_max_epochs():
    short = _training._schedule(100, 0.1, "constant")
    long = _training._schedule(1000, 0.1, "constant")
    # warm-up over its share of the steps, then the peak rate until the fit ends
    assert short(0) == pytest.approx(0.1) and short(50) == long(500) == 1.0
    cosine = _training._schedule(100, 0.1, "cosine")
    assert cosine(99) < 0.01  # the cosine anneals to zero at max_epochs


def test_the_returned_model_is_the_one_history_names(small_train, small_test):
    """The weights fit returns are the average at the epoch ``history_`` marks
    ``returned``: evaluating the fitted model reproduces that epoch's record exactly."""
    # the per-epoch records rank with the weight in force during the fit; "auto" would
    # choose another after the last epoch, so it is fixed here
    est = MGSVGrounder(features=small_train.features, **{**TINY, "max_epochs": 4,
                                                          "patience": 4, "moment_weight": 0.05})
    est.fit(small_train.frame, eval_set=(small_test.frame, small_test.features))
    hist = pd.DataFrame(est.history_)
    assert hist["returned"].sum() == 1
    kept = hist.loc[hist["returned"] == 1].iloc[0]
    assert int(kept["epoch"]) == est.best_epoch_
    assert f"end of epoch {est.best_epoch_}" in est.returned_weights_
    assert "average of the weights" in est.returned_weights_
    report = evaluate(est, small_test.frame, features=small_test.features)
    for key in ("R@1", "MRR", "mIoU"):
        assert report[key] == pytest.approx(kept[f"eval0_{key}"], abs=1e-6)


def test_a_planted_plateau_stops_the_fit_and_returns_the_kept_average(small_train,
                                                                     monkeypatch):
    """Validation rises to a plateau then stalls: the fit stops ``patience`` epochs later and
    returns the average it validated at the kept epoch (never the live weights of the last
    epoch, never an unaveraged snapshot), which scores what the kept epoch scored."""
    curve = iter([0.2, 0.5, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7])
    real = _training.validation_report
    validated: dict[int, dict[str, torch.Tensor]] = {}
    live: dict[int, dict[str, torch.Tensor]] = {}
    real_swap = WeightAverage.swap

    def spy_swap(self: WeightAverage) -> None:
        # first swap of an epoch: the live weights are still in the model
        if not getattr(self, "_in", False):
            live[len(validated) + 1] = {n: p.detach().clone()
                                        for n, p in zip(range(len(self._params)), self._params)}
        self._in = not getattr(self, "_in", False)
        real_swap(self)

    def planted(model, split, *args, **kwargs):
        report = real(model, split, *args, **kwargs)
        report["MRR"] = next(curve)
        validated[len(validated) + 1] = {k: v.detach().clone()
                                         for k, v in model.state_dict().items()}
        return report

    monkeypatch.setattr(_training, "validation_report", planted)
    monkeypatch.setattr(WeightAverage, "swap", spy_swap)
    est = MGSVGrounder(features=small_train.features,
                       **{**TINY, "max_epochs": 10, "patience": 2}).fit(small_train.frame)
    # two-epoch means 0.2, 0.35, 0.6, 0.7, 0.7, 0.7: best at epoch 4, two stale epochs; the
    # plateau's epochs tie, and the latest of them (the most trained average) is kept
    assert est.n_epochs_ == 6 and est.stopped_ == "converged" and est.best_epoch_ == 6
    final = est.model_.state_dict()
    assert all(torch.equal(final[k], validated[6][k]) for k in final)
    assert not all(torch.equal(final[k], validated[4][k]) for k in final)
    # the returned weights are an average: not the live weights the optimizer left
    params = [p for p in est.model_.parameters() if p.dtype.is_floating_point]
    assert any(not torch.equal(p.cpu(), live[6][i].cpu()) for i, p in enumerate(params))
    assert "stopped after 2 epochs without improvement (6 epochs run)" in est.returned_weights_


def test_without_averaging_the_raw_weights_are_returned(small_train):
    est = MGSVGrounder(features=small_train.features, average_halflife=0,
                       **{**TINY, "max_epochs": 2}).fit(small_train.frame)
    assert est.returned_weights_.startswith(f"the weights at the end of epoch {est.best_epoch_}")
    averaged = MGSVGrounder(features=small_train.features,
                            **{**TINY, "max_epochs": 2}).fit(small_train.frame)
    a = np.concatenate([p.detach().ravel().numpy() for p in est.model_.parameters()])
    b = np.concatenate([p.detach().ravel().numpy() for p in averaged.model_.parameters()])
    assert not np.allclose(a, b)


def test_returned_weights_survive_save_and_load(tiny_fitted, tmp_path):
    tiny_fitted.save(tmp_path / "m")
    loaded = MGSVGrounder.load(tmp_path / "m")
    assert loaded.returned_weights_ == tiny_fitted.returned_weights_ != ""


def test_invalid_schedule_parameters_are_refused(small_train):
    for bad in ({"lr_schedule": "step"}, {"average_halflife": -1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            MGSVGrounder(features=small_train.features, **{**TINY, **bad}).fit(
                small_train.frame)
