"""mgsv_sk.plot renders with the Agg backend; snippet_evidence; progress bars only when
verbose."""

from __future__ import annotations

import doctest
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mgsv_sk import pack_features  # noqa: E402
from mgsv_sk import plot as mplot  # noqa: E402
from mgsv_sk.evaluation.metrics import retrieval_ranks  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _save(ax, path):
    ax.figure.savefig(path, dpi=60)
    assert path.exists() and path.stat().st_size > 5_000
    return path


def _history(n_epochs=4, validation=True):
    rows = []
    for e in range(1, n_epochs + 1):
        row = {"epoch": e, "lr": 1e-3, "train_total": 10.0 / e, "train_l1": 1.0 / e,
               "train_dual": 5.0 / e, "seconds": 1.0}
        if validation:
            row.update({"val_mIoU": 0.1 * e, "val_R@1": 0.05 * e, "val_MedianR": 10.0 / e})
        rows.append(row)
    return rows


# -- snippet_evidence -------------------------------------------------------------------
def test_snippet_evidence_is_one_probability_per_valid_snippet(tiny_model, small_test):
    frame = small_test.frame.iloc[:7]
    evidence = tiny_model.snippet_evidence(frame, features=small_test.features)
    lengths = small_test.features.music_lengths(frame["music_id"].tolist())
    assert len(evidence) == len(frame)
    assert [len(e) for e in evidence] == lengths.tolist()
    for e in evidence:
        assert e.dtype == np.float64 and np.all((e > 0) & (e < 1))
    # row order follows X (inference sorts by length internally)
    again = tiny_model.snippet_evidence(frame.iloc[::-1], features=small_test.features)
    for a, b in zip(evidence, again[::-1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_snippet_evidence_matches_the_models_logits(tiny_model, small_test):
    import torch

    from mgsv_sk.infer.padding import pad_stack

    row = small_test.frame.iloc[[3]]
    got = tiny_model.snippet_evidence(row, features=small_test.features)[0]
    src = small_test.features
    model = tiny_model.model_
    with torch.no_grad():
        video, vmask = pad_stack([src.video(row["video_id"].iloc[0])])
        music, mmask = pad_stack([src.music(row["music_id"].iloc[0])])
        grounding = model.ground(model.encode_video(video, vmask),
                                 model.encode_music(music, mmask), torch.zeros(1, dtype=torch.long))
    np.testing.assert_allclose(got, torch.sigmoid(grounding.snippet_logits[0]).numpy(),
                               rtol=1e-4, atol=1e-5)


def test_snippet_evidence_needs_music_id(tiny_model, small_test):
    with pytest.raises(ValueError, match="music_id"):
        tiny_model.snippet_evidence(small_test.frame.drop(columns="music_id"),
                                    features=small_test.features)


# -- plot_timeline ----------------------------------------------------------------------
def test_timeline_draws_spans_evidence_and_legend(tmp_path):
    evidence = np.linspace(0.05, 0.95, 25)
    ax = mplot.plot_timeline(61.0, (10.0, 25.0), (12.5, 27.5), evidence)
    assert len(ax.containers) == 1 and len(ax.containers[0].patches) == 25
    assert len(ax.patches) == 25 + 2  # bars + true span + predicted span
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(labels) == 3 and "snippet evidence" in labels
    assert any(lb.startswith("ground truth 10.0-25.0") for lb in labels)
    assert any(lb.startswith("predicted 12.5-27.5") for lb in labels)
    assert "IoU 0.714" in ax.get_title()
    assert ax.get_xlim() == (0.0, 61.0) and ax.get_xlabel() == "track time (s)"
    _save(ax, tmp_path / "timeline.png")


def test_timeline_accepts_onnx_style_logits_and_existing_axes(tmp_path):
    logits = np.r_[np.array([-3.0, 2.0, 4.0, -1.0]), np.full(6, -np.inf)]  # padded row
    fig, axes = plt.subplots(2)
    ax = mplot.plot_timeline(9.0, evidence=logits[None], logits=True, ax=axes[1])
    assert ax is axes[1]
    heights = [p.get_height() for p in ax.containers[0].patches]
    np.testing.assert_allclose(heights, 1 / (1 + np.exp(-logits[:4])))
    # a long track: the part past 240 s is greyed out
    ax2 = mplot.plot_timeline(300.0, predicted_moment=(0, 30), ax=axes[0])
    assert len(ax2.patches) == 2 and "not modelled" in ax2.get_legend().get_texts()[-1].get_text()
    _save(ax, tmp_path / "two.png")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"duration": 0.0}, "duration must be a positive"),
        ({"true_moment": (20.0, 10.0)}, "true_moment must be"),
        ({"predicted_moment": (1.0, 2.0, 3.0)}, "predicted_moment must be"),
        ({"evidence": [0.2, 1.7]}, "logits=True"),
        ({"evidence": np.zeros((2, 3))}, "shape"),
        ({"evidence": np.full(96, 0.5)}, "96 snippets"),
        ({"evidence": [-np.inf, -np.inf], "logits": True}, "all -inf"),
    ],
)
def test_timeline_bad_input_is_explained(kwargs, message):
    args = {"duration": 30.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        mplot.plot_timeline(**args)


def test_plot_prediction_from_a_fitted_model(tiny_model, small_test, tmp_path):
    ax = mplot.plot_prediction(tiny_model, small_test.frame, row=2, features=small_test.features)
    n = len(small_test.features.music(small_test.frame["music_id"].iloc[2]))
    assert len(ax.containers[0].patches) == n
    assert small_test.frame["video_id"].iloc[2] in ax.get_title()
    _save(ax, tmp_path / "prediction.png")
    with pytest.raises(ValueError, match="music_id"):
        mplot.plot_prediction(tiny_model, small_test.frame.drop(columns="music_id"))
    with pytest.raises(IndexError, match="out of range"):
        mplot.plot_prediction(tiny_model, small_test.frame, row=10_000)


# -- plot_training_curves ---------------------------------------------------------------
def test_training_curves_from_a_fitted_model(tiny_model, tmp_path):
    loss_ax, val_ax = mplot.plot_training_curves(tiny_model)
    terms = [k for k in tiny_model.history_[0] if k.startswith("train_")]
    assert [line.get_label() for line in loss_ax.get_lines()][: len(terms)] == [
        t[6:] for t in terms]
    assert loss_ax.get_yscale() == "log"
    shown = [ln.get_label() for ln in val_ax.get_lines() if not ln.get_label().startswith("_")]
    assert shown == [m for m in mplot.DEFAULT_CURVE_METRICS if f"val_{m}" in tiny_model.history_[0]]
    assert all(len(line.get_xdata()) == tiny_model.n_epochs_ for line in val_ax.get_lines()[:1])
    assert any(f"best epoch {tiny_model.best_epoch_}" == t.get_text() for t in val_ax.texts)
    _save(loss_ax, tmp_path / "curves.png")


def test_training_curves_from_rows_frame_and_without_validation(tmp_path):
    loss_ax, val_ax = mplot.plot_training_curves(pd.DataFrame(_history()),
                                                 metrics=["val_mIoU", "R@1"], best_epoch=3)
    assert [ln.get_label() for ln in val_ax.get_lines()] == ["mIoU", "R@1", "_best epoch"]
    assert len(loss_ax.get_lines()) == 3 + 1
    fig, axes = plt.subplots(1, 2)
    loss_ax, val_ax = mplot.plot_training_curves(_history(3, validation=False), axes=axes)
    assert loss_ax is axes[0] and not val_ax.get_lines()
    assert "no validation" in val_ax.texts[0].get_text()
    _save(loss_ax, tmp_path / "noval.png")


@pytest.mark.parametrize(
    ("history", "kwargs", "error", "message"),
    [
        ([], {}, ValueError, "history is empty"),
        (pd.DataFrame(), {}, ValueError, "history is empty"),
        ([{"epoch": 1, "val_mIoU": 0.2}], {}, ValueError, "no train_"),
        (_history(), {"metrics": ["MoR@1,0.5"]}, ValueError, "available"),
        ([1, 2], {}, TypeError, "list of dicts"),
        (42, {}, TypeError, "history must be"),
    ],
)
def test_training_curves_bad_input_is_explained(history, kwargs, error, message):
    with pytest.raises(error, match=message):
        mplot.plot_training_curves(history, **kwargs)


# -- plot_recall_at_k -------------------------------------------------------------------
def test_recall_at_k_curves_per_model(tmp_path):
    scores = np.random.default_rng(0).random((40, 30))
    gallery = np.array([f"m{i}" for i in range(30)], dtype=object)
    truth = gallery[np.arange(40) % 30]
    ranks = retrieval_ranks(scores, gallery, truth)
    better = np.minimum(ranks, np.arange(40) % 3)
    ax = mplot.plot_recall_at_k([better, ranks], labels=["model", "random"], gallery_size=30)
    lines = ax.get_lines()
    assert [ln.get_label().split(" (")[0] for ln in lines] == ["model", "random", "chance"]
    k, recall = lines[1].get_xdata(), lines[1].get_ydata()
    np.testing.assert_array_equal(k, np.arange(1, 31))
    np.testing.assert_allclose(recall, [(ranks < kk).mean() for kk in k])
    assert recall[-1] == 1.0 and np.all(np.diff(recall) >= 0)
    assert ax.get_xscale() == "log" and "30 tracks" in ax.get_title()
    assert len(ax.get_legend().get_texts()) == 3
    _save(ax, tmp_path / "recall.png")


def test_recall_at_k_single_array_dict_and_ks():
    ax = mplot.plot_recall_at_k(np.array([0, 1, 5]), ks=[1, 2, 5, 10], log_x=False)
    (line,) = ax.get_lines()
    np.testing.assert_allclose(line.get_ydata(), [1 / 3, 2 / 3, 2 / 3, 1.0])
    assert line.get_label() == "R@1 0.33, MedianR 2"
    ax = mplot.plot_recall_at_k({"a": [0, 1], "b": [2, 3, 0]})
    assert [ln.get_label()[0] for ln in ax.get_lines()] == ["a", "b"]
    assert ax.get_lines()[0].get_xdata()[-1] == 4  # largest rank + 1


@pytest.mark.parametrize(
    ("ranks", "kwargs", "message"),
    [
        ([[0, 1], [2, 0]], {"labels": ["only one"]}, "one label per model"),
        ({"a": [0]}, {"labels": ["a"]}, "labels must be None"),
        ([0, 5], {"gallery_size": 5}, "does not fit a gallery of 5"),
        ([0, 1], {"ks": [3, 2]}, "ks must be increasing"),
        ([], {}, "empty"),
        ([0, -1], {}, "ranks must be finite"),
    ],
)
def test_recall_at_k_bad_input_is_explained(ranks, kwargs, message):
    with pytest.raises(ValueError, match=message):
        mplot.plot_recall_at_k(ranks, **kwargs)


def test_axes_argument_is_checked():
    with pytest.raises(TypeError, match="Axes"):
        mplot.plot_recall_at_k([0, 1], ax="not an axes")


def test_docstring_examples_run():
    result = doctest.testmod(mplot, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 2 and result.failed == 0


def test_import_mgsv_sk_does_not_import_matplotlib():
    code = ("import sys, mgsv_sk; mgsv_sk.evaluate; mgsv_sk.make_synthetic_mgsv; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
    # (torch-side modules checked statically: importing torch in a subprocess is slow)
    package = Path(mplot.__file__).parent
    importers = [str(f.relative_to(package)) for f in package.rglob("*.py")
                 if f.name != "plot.py" and any(
                     line.startswith(("import matplotlib", "from matplotlib"))
                     for line in f.read_text().splitlines())]
    assert importers == []


def test_missing_matplotlib_gives_install_hint():
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "try:\n    import mgsv_sk.plot\nexcept ImportError as e:\n"
            "    assert 'pip install \"mgsv-sk[plot]\"' in str(e), e\n"
            "else:\n    raise SystemExit(1)")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- progress bars ----------------------------------------------------------------------
def test_pack_features_bar_only_when_verbose(small_test, tmp_path, capsys):
    frame = small_test.frame.iloc[:5]
    n = 5 + frame["music_id"].nunique()
    pack_features(small_test.features, tmp_path / "quiet", annotations=frame)
    assert capsys.readouterr().err == ""
    pack_features(small_test.features, tmp_path / "loud", annotations=frame, verbose=1)
    err = capsys.readouterr().err
    assert "packing into loud" in err and f"{n}/{n}" in err


def test_predict_and_evaluate_bars_only_when_verbose(tiny_model, small_test, capsys):
    from mgsv_sk import evaluate

    frame = small_test.frame.iloc[:10]
    tiny_model.predict(frame, features=small_test.features)
    evaluate(tiny_model, frame, features=small_test.features)
    assert capsys.readouterr().err == ""
    tiny_model.set_params(verbose=1)
    tiny_model.predict(frame, features=small_test.features)
    assert "grounding" in capsys.readouterr().err
    tiny_model.set_params(verbose=0)
    evaluate(tiny_model, frame, features=small_test.features, verbose=1)
    err = capsys.readouterr().err
    assert "evaluating" in err and "2/2" in err


def test_generalisation_curves_draw_validation_and_test(tmp_path):
    from mgsv_sk.plot import plot_generalisation

    rows = [{"epoch": e, "val_R@1": 0.3 + 0.05 * e, "eval0_R@1": 0.2 + 0.04 * e}
            for e in range(1, 6)]
    ax = plot_generalisation({"hook": rows, "noisy": pd.DataFrame(rows)},
                             best_epochs={"hook": 4})
    lines = [ln for ln in ax.get_lines() if ln.get_label().startswith(("hook", "noisy"))]
    assert len(lines) == 4
    test_line = next(ln for ln in lines if ln.get_label() == "hook: test")
    assert list(test_line.get_ydata()) == pytest.approx([0.24, 0.28, 0.32, 0.36, 0.40])
    ax.figure.savefig(tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="eval_set"):
        plot_generalisation({"x": [{"epoch": 1, "val_R@1": 0.1}]})
    with pytest.raises(ValueError, match="empty"):
        plot_generalisation({})


def test_fit_budget_draws_each_setting_against_its_seconds(tmp_path):
    from mgsv_sk.plot import plot_fit_budget

    fits = {"noisy": {"defaults": {"fit_seconds": 400.0, "R@1": 0.64},
                      "max_epochs=8": {"fit_seconds": 500.0, "R@1": 0.62},
                      "max_epochs=3": {"fit_seconds": 200.0, "R@1": 0.50}},
            "hook": {"defaults": {"fit_seconds": 900.0, "R@1": 0.93},
                     "max_epochs=5": {"fit_seconds": 300.0, "R@1": 0.85}}}
    ax = plot_fit_budget(fits)
    fixed = next(ln for ln in ax.get_lines() if ln.get_label() == "noisy: fixed settings")
    # fixed settings joined in order of their seconds
    assert list(fixed.get_xdata()) == [200.0, 500.0]
    assert list(fixed.get_ydata()) == pytest.approx([0.50, 0.62])
    star = next(ln for ln in ax.get_lines() if ln.get_label() == "hook: defaults")
    assert star.get_marker() == "*" and list(star.get_ydata()) == [0.93]
    ax.figure.savefig(tmp_path / "budget.png")
    assert (tmp_path / "budget.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="lacks"):
        plot_fit_budget({"x": {"defaults": {"R@1": 0.5}}})
    with pytest.raises(ValueError, match="lacks"):
        plot_fit_budget({"x": {"defaults": {"R@1": float("nan"), "fit_seconds": 1.0}}})
    with pytest.raises(ValueError, match="empty"):
        plot_fit_budget({})
