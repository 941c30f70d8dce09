"""Pictures of a grounder: a track's timeline with the true and predicted moments and the
detector's per-snippet evidence, training curves from ``history_``, and recall@k curves of
video-to-music retrieval.

Needs matplotlib (``pip install "mgsv-sk[plot]"``); ``import mgsv_sk`` never imports it.
Every function draws on the matplotlib Axes it is given (``ax=None`` makes a new figure)
and returns it; none calls ``plt.show`` or changes the backend.

=========================  ==========================================================
function                   input
=========================  ==========================================================
plot_timeline              arrays: track duration, moments, per-snippet evidence
                           (also the ONNX detector's raw ``snippet_logits``)
plot_prediction            a fitted grounder and one row of a frame (SmG)
plot_training_curves       ``MGSVGrounder.history_`` (or the fitted estimator)
plot_generalisation        several histories with ``fit(eval_set=...)``: validation
                           against test on unseen tracks, epoch by epoch
plot_recall_at_k           0-based ranks from :func:`mgsv_sk.evaluation.metrics.retrieval_ranks`,
                           one model or several as labelled curves
plot_fit_budget            per world, fits of several settings: a metric against the
                           seconds each fit took (the defaults against fixed budgets)
=========================  ==========================================================
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from mgsv_sk._extras import require
from mgsv_sk.errors import InvalidInputError, InvalidTypeError

require("matplotlib", "mgsv_sk.plot")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from mgsv_sk.data.spans import MAX_MUSIC_SECONDS, SNIPPET_HOP_SECONDS, temporal_iou  # noqa: E402
from mgsv_sk.evaluation.metrics import RECALL_KS, check_ranks  # noqa: E402

__all__ = ["plot_fit_budget", "plot_generalisation", "plot_prediction", "plot_recall_at_k",
           "plot_timeline", "plot_training_curves"]

#: Validation metrics drawn by default (those of ``history_`` that are fractions).
DEFAULT_CURVE_METRICS = ("mIoU", "IoU@0.5", "R@1", "R@10", "MoR@1,0.5", "MoR@10,0.5")

_TRUE_COLOR = "tab:green"
_PRED_COLOR = "tab:orange"
_EVIDENCE_COLOR = "tab:blue"


def _new_axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    if ax is not None:
        if not isinstance(ax, Axes):
            raise InvalidTypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")
        return ax
    _, new = plt.subplots(figsize=figsize, layout="constrained")
    return new


def _moment(value: npt.ArrayLike | None, name: str) -> np.ndarray | None:
    if value is None:
        return None
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (2,) or not np.all(np.isfinite(arr)) or arr[1] < arr[0]:
        raise InvalidInputError(f"{name} must be (start, end) in seconds with start <= end, "
                                f"got {value!r}")
    return arr


def _evidence(values: npt.ArrayLike, logits: bool) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]  # one row of a [B, S] output
    if arr.ndim != 1 or arr.size == 0:
        raise InvalidInputError("evidence must be one value per snippet, shape (S,) with S >= 1; "
                                f"got shape {arr.shape} (pass one row of a [batch, S] output)")
    if logits:
        valid = np.flatnonzero(arr != -np.inf)  # padding is -inf in snippet_logits
        if valid.size == 0:
            raise InvalidInputError("evidence logits are all -inf (padding only)")
        arr = arr[: valid[-1] + 1]
        if np.isnan(arr).any():
            raise InvalidInputError("evidence logits contain NaN")
        return 1.0 / (1.0 + np.exp(-np.clip(arr, -60.0, 60.0)))
    if not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0:
        raise InvalidInputError(
            "evidence must be probabilities in [0, 1] (as MGSVGrounder.snippet_evidence "
            f"returns), got values in [{np.nanmin(arr):.3g}, {np.nanmax(arr):.3g}]; pass "
            "logits=True for raw snippet_logits such as the ONNX detector's output")
    return arr


def plot_timeline(
    duration: float,
    true_moment: npt.ArrayLike | None = None,
    predicted_moment: npt.ArrayLike | None = None,
    evidence: npt.ArrayLike | None = None,
    *,
    logits: bool = False,
    snippet_seconds: float = SNIPPET_HOP_SECONDS,
    title: str | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Draw a track's timeline: the true and predicted moments as shaded spans and the
    detector's per-snippet evidence as bars.

    Parameters
    ----------
    duration : float
        Length of the track in seconds (the x axis runs from 0 to it; the model sees the
        first 240 s, anything past is greyed out).
    true_moment, predicted_moment : (start, end) in seconds, optional
        The ground-truth moment (``music_start``, ``music_end``) and the prediction
        (``start``, ``end`` of ``predict``). With both, the title gives their IoU.
    evidence : array of shape (S,), optional
        One value per snippet of the track, snippet k centred at ``k * snippet_seconds``:
        probabilities in [0, 1] (:meth:`MGSVGrounder.snippet_evidence`), or raw logits
        with ``logits=True`` (the ``snippet_logits`` output of the ONNX detector graph;
        trailing ``-inf`` padding is dropped).
    logits : bool
        ``evidence`` holds logits: apply the sigmoid first.
    snippet_seconds : float
        Seconds between snippet centres (2.5 in MGSV-EC).
    title : str, optional
        Axes title (default: "Track timeline", plus the IoU when both moments are given).
    ax : matplotlib Axes, optional
        Where to draw; None makes a new figure.

    Returns
    -------
    matplotlib Axes

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> ax = plot_timeline(60.0, (10.0, 25.0), (12.5, 27.5), [0.1] * 4 + [0.9] * 6 + [0.1] * 15)
    >>> ax.get_title()
    'Track timeline (IoU 0.714)'
    """
    d = float(duration)
    if not np.isfinite(d) or d <= 0:
        raise InvalidInputError(f"duration must be a positive number of seconds, got {duration!r}")
    if not snippet_seconds > 0:
        raise InvalidInputError(f"snippet_seconds must be > 0, got {snippet_seconds!r}")
    gt = _moment(true_moment, "true_moment")
    pred = _moment(predicted_moment, "predicted_moment")
    probs = None if evidence is None else _evidence(evidence, logits)
    if probs is not None:
        covered = (len(probs) - 1) * snippet_seconds
        if covered > min(d, MAX_MUSIC_SECONDS) + 2 * snippet_seconds:
            raise InvalidInputError(
                f"evidence has {len(probs)} snippets (up to {covered:g} s) but the track lasts "
                f"{d:g} s: pass the evidence of this row's own track")
    ax = _new_axes(ax, (9.0, 3.2))

    if probs is not None:
        centres = np.arange(len(probs)) * snippet_seconds
        ax.bar(centres, probs, width=snippet_seconds * 0.9, color=_EVIDENCE_COLOR, alpha=0.55,
               label="snippet evidence", zorder=2)
    if gt is not None:
        ax.axvspan(gt[0], gt[1], color=_TRUE_COLOR, alpha=0.25, lw=0, zorder=1,
                   label=f"ground truth {gt[0]:.1f}-{gt[1]:.1f} s")
    if pred is not None:
        ax.axvspan(pred[0], pred[1], facecolor="none", edgecolor=_PRED_COLOR, hatch="//",
                   lw=2, zorder=3, label=f"predicted {pred[0]:.1f}-{pred[1]:.1f} s")
    if d > MAX_MUSIC_SECONDS:
        ax.axvspan(MAX_MUSIC_SECONDS, d, color="0.85", lw=0, zorder=0,
                   label=f"past {MAX_MUSIC_SECONDS:g} s (not modelled)")

    if title is None:
        title = "Track timeline"
        if gt is not None and pred is not None:
            iou = temporal_iou(pred[None], gt[None], np.array([d]))[0]
            title += f" (IoU {iou:.3f})"
    ax.set_title(title)
    ax.set_xlim(0.0, d)
    ax.set_ylim(0.0, 1.35)  # head-room for the legend above the bars
    ax.set_yticks([0.0, 0.25, 0.5, 0.75, 1.0])
    ax.set_xlabel("track time (s)")
    ax.set_ylabel("P(snippet in moment)" if probs is not None else "")
    if probs is None:
        ax.set_yticks([])
    ax.grid(axis="x", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", ncol=3, fontsize="small", framealpha=0.9)
    return ax


def plot_prediction(
    estimator: Any,
    X: pd.DataFrame,
    row: int = 0,
    *,
    features: Any = None,
    ax: Axes | None = None,
) -> Axes:
    """:func:`plot_timeline` for one row of ``X``: the moment ``estimator.predict`` gives on
    the row's own track (SmG), the ground truth when ``X`` has it, and the per-snippet
    evidence when the estimator has ``snippet_evidence`` (``MGSVGrounder`` does).

    Parameters
    ----------
    estimator : fitted grounder
        ``MGSVGrounder``, a baseline, or ``mgsv_sk.export.runtime.OnnxGrounder``.
    X : DataFrame
        MGSV-EC rows with ``video_id``, ``music_id`` and ``music_total_duration``;
        ``music_start`` / ``music_end`` give the true moment.
    row : int
        Position (``iloc``) of the row to draw.
    features : feature source, optional
        Passed to ``predict`` / ``snippet_evidence``.
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib Axes
    """
    if not isinstance(X, pd.DataFrame):
        raise InvalidTypeError(f"X must be a pandas DataFrame, got {type(X).__name__}")
    missing = [c for c in ("video_id", "music_id", "music_total_duration") if c not in X]
    if missing:
        raise InvalidInputError(f"X lacks column(s) {missing}: plot_prediction draws a row on its "
                                "own track (SmG), so it needs video_id, music_id and "
                                "music_total_duration")
    if not -len(X) <= row < len(X):
        raise IndexError(f"row {row} is out of range for X with {len(X)} rows")
    one = X.iloc[[row]]
    kwargs = {} if features is None else {"features": features}
    pred = estimator.predict(one, **kwargs).iloc[0]
    evidence = None
    if hasattr(estimator, "snippet_evidence"):
        evidence = estimator.snippet_evidence(one, **kwargs)[0]
    truth = None
    if {"music_start", "music_end"} <= set(one.columns):
        truth = (float(one["music_start"].iloc[0]), float(one["music_end"].iloc[0]))
    ax = plot_timeline(float(one["music_total_duration"].iloc[0]), truth,
                       (float(pred["start"]), float(pred["end"])), evidence, ax=ax)
    ax.set_title(f"video {one['video_id'].iloc[0]} on track {one['music_id'].iloc[0]}: "
                 + ax.get_title())
    return ax


def _history_frame(history: Any) -> tuple[pd.DataFrame, int | None]:
    best = getattr(history, "best_epoch_", None)
    if hasattr(history, "history_"):
        history = history.history_
    if isinstance(history, pd.DataFrame):
        frame = history.reset_index(drop=True)
    elif isinstance(history, Sequence) and not isinstance(history, str):
        bad = [type(r).__name__ for r in history if not isinstance(r, Mapping)]
        if bad:
            raise InvalidTypeError(f"history must be a list of dicts (MGSVGrounder.history_), got "
                                   f"items of type {sorted(set(bad))}")
        frame = pd.DataFrame(list(history))
    else:
        raise InvalidTypeError("history must be MGSVGrounder.history_ (a list of dicts), a "
                               "DataFrame of it, or a fitted MGSVGrounder; got "
                               f"{type(history).__name__}")
    if frame.empty:
        raise InvalidInputError("history is empty: fit the model for at least one epoch first")
    return frame, (int(best) if best is not None else None)


def plot_training_curves(
    history: Any,
    *,
    metrics: Sequence[str] | None = None,
    best_epoch: int | None = None,
    axes: Sequence[Axes] | None = None,
) -> tuple[Axes, Axes]:
    """Draw the training loss terms and the validation metrics per epoch.

    Parameters
    ----------
    history : list of dict, DataFrame or fitted MGSVGrounder
        ``MGSVGrounder.history_``: one dict per epoch with ``epoch``, ``train_<term>``
        (``total``, ``l1``, ``giou``, ``fg``, ``snippet``, ``dual``, ``xpool``) and
        ``val_<metric>`` (``mIoU``, ``R@1``, ``MoR@10,0.5``, ...). A fitted estimator gives
        its history and best epoch.
    metrics : list of str, optional
        Validation metrics to draw, by report name (``"mIoU"``, ``"R@10"``; the ``val_``
        prefix is optional). Default: those of :data:`DEFAULT_CURVE_METRICS` present.
    best_epoch : int, optional
        Epoch marked by a dotted line (default: the estimator's ``best_epoch_``, when an
        estimator is given).
    axes : pair of matplotlib Axes, optional
        Where to draw the losses and the metrics; None makes a figure with two panels.

    Returns
    -------
    (Axes, Axes)
        The loss panel (log scale) and the validation panel. Without validation metrics
        (``validation_fraction=0``) the second panel only says so.
    """
    frame, fitted_best = _history_frame(history)
    best = best_epoch if best_epoch is not None else fitted_best
    epochs = (frame["epoch"].to_numpy() if "epoch" in frame
              else np.arange(1, len(frame) + 1))
    losses = [c for c in frame.columns if str(c).startswith("train_")]
    if not losses:
        raise InvalidInputError("history has no train_* loss columns; got columns "
                                f"{list(frame.columns)}")
    available = [str(c)[4:] for c in frame.columns if str(c).startswith("val_")]
    if metrics is None:
        chosen = [m for m in DEFAULT_CURVE_METRICS if m in available]
    else:
        chosen = [m[4:] if m.startswith("val_") else m for m in metrics]
        unknown = [m for m in chosen if m not in available]
        if unknown:
            raise InvalidInputError(f"metrics {unknown} are not in the history; available: "
                                    f"{available or 'none (fit had no validation split)'}")
    if axes is None:
        _, pair = plt.subplots(1, 2, figsize=(11.0, 3.8), layout="constrained")
        loss_ax, val_ax = pair[0], pair[1]
    else:
        if len(axes) != 2 or not all(isinstance(a, Axes) for a in axes):
            raise InvalidInputError("axes must be two matplotlib Axes (losses, validation metrics)")
        loss_ax, val_ax = axes[0], axes[1]
    marker = "o" if len(frame) < 30 else None

    for column in losses:
        values = frame[column].to_numpy(dtype=np.float64)
        total = column == "train_total"
        loss_ax.plot(epochs, values, marker=marker, markersize=3,
                     lw=2.5 if total else 1.3, color="black" if total else None,
                     label=column[6:], zorder=3 if total else 2)
    positive = all((frame[c].dropna() > 0).all() for c in losses)
    if positive:
        loss_ax.set_yscale("log")
    loss_ax.set_title("Training loss by term")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss (weighted sum = total)" if positive else "loss")
    loss_ax.legend(fontsize="small", ncol=2)

    for m in chosen:  # line style by family: grounding solid, retrieval dashed, MsG dash-dot
        style = "-." if m.startswith("MoR") else "--" if m.startswith(("R@", "MRR")) else "-"
        val_ax.plot(epochs, frame[f"val_{m}"].to_numpy(dtype=np.float64), marker=marker,
                    markersize=3, ls=style, label=m)
    val_ax.set_title("Validation metrics")
    val_ax.set_xlabel("epoch")
    if chosen:
        val_ax.set_ylim(-0.02, 1.02)
        val_ax.set_ylabel("fraction")
        val_ax.legend(fontsize="small", ncol=2)
    else:
        val_ax.text(0.5, 0.5, "no validation metrics\n(validation_fraction=0)",
                    ha="center", va="center", transform=val_ax.transAxes, color="0.4")
        val_ax.set_yticks([])
    for a in (loss_ax, val_ax):
        a.grid(alpha=0.3)
        if len(epochs) > 1:
            a.set_xlim(float(epochs.min()), float(epochs.max()))
        a.xaxis.get_major_locator().set_params(integer=True)
        if best is not None:
            a.axvline(best, color="0.4", ls=":", lw=1.2, label="_best epoch")
    if best is not None:
        val_ax.annotate(f"best epoch {best}", xy=(best, 0.0), xycoords=("data", "axes fraction"),
                        xytext=(3, 4), textcoords="offset points", fontsize="small",
                        color="0.3")
    return loss_ax, val_ax


def plot_generalisation(
    histories: Mapping[str, Any],
    *,
    metric: str = "R@1",
    evaluation: str = "eval0",
    best_epochs: Mapping[str, int] | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Validation and held-out test curves of one metric, epoch by epoch, for several fits.

    Parameters
    ----------
    histories : mapping of label -> history
        Each a ``history_`` (list of dicts, DataFrame) or a fitted MGSVGrounder, fitted
        with ``eval_set=``: the validation curve (``val_<metric>``, dashed) and the
        evaluation split's (``<evaluation>_<metric>``, solid) share a colour per label.
    metric : str
        Report name, e.g. "R@1", "MoR@1,0.5", "mIoU".
    evaluation : str
        Prefix of the ``eval_set`` split in the history ("eval0": the first).
    best_epochs : mapping of label -> int, optional
        The epoch each fit kept, marked with a dot on its test curve (default: a fitted
        estimator's ``best_epoch_``).

    Returns
    -------
    Axes
    """
    if not histories:
        raise InvalidInputError("histories is empty: give at least one label -> history")
    ax = _new_axes(ax, (6.4, 4.0))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, history) in enumerate(histories.items()):
        frame, fitted_best = _history_frame(history)
        needed = [f"val_{metric}", f"{evaluation}_{metric}"]
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise InvalidInputError(f"history {label!r} has no column(s) {missing}: fit with a "
                                    "validation split and eval_set= to record both curves")
        epochs = (frame["epoch"].to_numpy() if "epoch" in frame
                  else np.arange(1, len(frame) + 1))
        color = colors[i % len(colors)]
        test = frame[needed[1]].to_numpy(dtype=np.float64)
        ax.plot(epochs, test, color=color, lw=2, marker="o", markersize=3,
                label=f"{label}: test")
        ax.plot(epochs, frame[needed[0]].to_numpy(dtype=np.float64), color=color, lw=1.2,
                ls="--", label=f"{label}: validation")
        best = (best_epochs or {}).get(label, fitted_best)
        if best is not None and best in set(epochs.tolist()):
            ax.plot([best], [test[list(epochs).index(best)]], "o", color=color,
                    markersize=9, markerfacecolor="none", markeredgewidth=2)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per epoch: validation (dashed) and unseen test tracks (solid)")
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize="small", ncol=2)
    return ax


def _check_budget_records(world: Any, settings: Any, metric: str) -> None:
    """Each setting of a world: a record with finite ``fit_seconds`` and ``metric``."""
    if not isinstance(settings, Mapping) or not settings:
        raise InvalidInputError(f"world {world!r}: give a non-empty mapping of setting label "
                                "-> record")
    for label, rec in settings.items():
        values = [rec.get(k) if isinstance(rec, Mapping) else None
                  for k in ("fit_seconds", metric)]
        if not all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
                   and np.isfinite(v) for v in values):
            raise InvalidInputError(f"world {world!r}: setting {label!r} lacks a finite "
                                    f"'fit_seconds' or {metric!r}; give both as numbers")


def plot_fit_budget(
    fits: Mapping[str, Mapping[str, Mapping[str, float]]],
    *,
    metric: str = "R@1",
    highlight: str = "defaults",
    ax: Axes | None = None,
) -> Axes:
    """A test metric against fit seconds, one colour per world: the fits of each setting
    joined in order of their seconds, the ``highlight`` setting drawn as a star.

    Parameters
    ----------
    fits : mapping of world -> (mapping of setting label -> record)
        Each record holds ``fit_seconds`` and ``metric`` (e.g. ``benchmarks/accuracy.py
        --curves``' per-world ``schedules``: ``"defaults"``, ``"max_epochs=5"``, ...).
    metric : str
        The record's key to plot, e.g. "R@1", "MoR@1,0.5", "mIoU".
    highlight : str
        Settings whose label starts with this are starred and labelled.

    Returns
    -------
    Axes
    """
    if not isinstance(fits, Mapping) or not fits:
        raise InvalidInputError("fits must be a non-empty mapping of world -> {setting: "
                                "record}, e.g. benchmarks/accuracy.py --curves' schedules")
    for world, settings in fits.items():  # every record checked before anything is drawn
        _check_budget_records(world, settings, metric)
    ax = _new_axes(ax, (6.4, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (world, settings) in enumerate(fits.items()):
        color = colors[i % len(colors)]
        plain = sorted((float(rec["fit_seconds"]), float(rec[metric]), str(label))
                       for label, rec in settings.items()
                       if not str(label).startswith(highlight))
        if plain:
            ax.plot([x for x, _, _ in plain], [y for _, y, _ in plain], color=color, lw=1.2,
                    marker="o", markersize=4, label=f"{world}: fixed settings")
            for x, y, label in plain:
                ax.annotate(re.sub(r".*?(\d+)\D*$", r"\1", label), (x, y),
                            textcoords="offset points",
                            xytext=(3, -9), fontsize="x-small", color=color)
        for label, rec in settings.items():
            if str(label).startswith(highlight):
                ax.plot([rec["fit_seconds"]], [rec[metric]], "*", color=color, markersize=14,
                        markeredgecolor="black", label=f"{world}: {highlight}")
    ax.set_xlabel("fit seconds")
    ax.set_ylabel(f"test {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small", ncol=2)
    return ax


def _rank_sets(
    ranks: Any, labels: Sequence[str] | None
) -> list[tuple[str | None, np.ndarray]]:
    """(label, checked ranks) per model from the accepted forms of ``ranks``."""
    if isinstance(ranks, Mapping):
        if labels is not None:
            raise InvalidInputError("labels must be None when ranks is a dict (its keys are the "
                                    "labels)")
        items: list[tuple[str | None, Any]] = [(str(k), v) for k, v in ranks.items()]
    else:
        if isinstance(ranks, (np.ndarray, pd.Series)):
            single = ranks.ndim == 1
            groups = [ranks] if single else list(ranks)
        elif isinstance(ranks, Sequence) and not isinstance(ranks, str):
            single = len(ranks) > 0 and np.ndim(ranks[0]) == 0
            groups = [ranks] if single else list(ranks)
        else:
            raise InvalidTypeError("ranks must be a 1-D array of 0-based ranks, a list of such "
                                   f"arrays, or a dict label -> array; got {type(ranks).__name__}")
        if labels is not None and (isinstance(labels, str) or len(labels) != len(groups)):
            raise InvalidInputError(f"labels has {1 if isinstance(labels, str) else len(labels)} "
                                    f"entries but ranks holds {len(groups)} array(s): give one "
                                    "label per model (a list, even for one model)")
        items = [(None if labels is None else str(labels[i]), g) for i, g in enumerate(groups)]
    if not items:
        raise InvalidInputError("ranks is empty: give at least one array of 0-based ranks")
    return [(label, check_ranks(r)) for label, r in items]


def plot_recall_at_k(
    ranks: Any,
    *,
    labels: Sequence[str] | None = None,
    gallery_size: int | None = None,
    ks: npt.ArrayLike | None = None,
    log_x: bool = True,
    ax: Axes | None = None,
) -> Axes:
    """Draw recall@k of video-to-music retrieval against k, one curve per model.

    Parameters
    ----------
    ranks : array (n,), list of arrays, or dict label -> array
        0-based rank of each video's true track (:func:`mgsv_sk.retrieval_ranks`);
        several models as a list (with ``labels``) or a dict. Models may be scored on
        different numbers of videos.
    labels : list of str, optional
        One label per ranks array (not with a dict).
    gallery_size : int, optional
        Number of tracks ranked: the x axis ends there and a dashed line shows chance
        (k / gallery_size).
    ks : array of int, optional
        Values of k drawn (increasing, >= 1). Default: 1 .. gallery_size (or the largest
        rank + 1). The protocol's k (1, 5, 10, 25, 50, 100) are marked on each curve.
    log_x : bool
        Logarithmic k axis (the top ranks matter most).
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib Axes

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> ax = plot_recall_at_k({"model": [0, 3, 1, 40]}, gallery_size=50)
    >>> [line.get_label() for line in ax.get_lines()]
    ['model (R@1 0.25, MedianR 3)', 'chance']
    """
    sets = _rank_sets(ranks, labels)
    worst = max(float(r.max()) for _, r in sets)
    if gallery_size is not None:
        if isinstance(gallery_size, bool) or not isinstance(gallery_size, (int, np.integer)) \
                or gallery_size < 1:
            raise InvalidInputError(f"gallery_size must be a positive integer, got "
                                    f"{gallery_size!r}")
        if worst >= gallery_size:
            raise InvalidInputError(f"a rank of {worst:g} does not fit a gallery of {gallery_size} "
                                    "tracks (0-based ranks must be < gallery_size)")
    k_max = int(gallery_size) if gallery_size is not None else int(np.floor(worst)) + 1
    if ks is None:
        k_values = np.arange(1, k_max + 1)
    else:
        k_values = np.asarray(ks)
        if (k_values.ndim != 1 or k_values.size == 0
                or not np.issubdtype(k_values.dtype, np.integer) or k_values.min() < 1
                or np.any(np.diff(k_values) <= 0)):
            raise InvalidInputError(f"ks must be increasing integers >= 1, got {ks!r}")
    marks = [int(i) for i in np.flatnonzero(np.isin(k_values, RECALL_KS))]
    ax = _new_axes(ax, (6.0, 4.2))
    for label, r in sets:
        recall = (r[None, :] < k_values[:, None]).mean(axis=1)
        r1 = float(np.mean(r < 1))
        median = float(np.median(r + 1))
        summary = f"R@1 {r1:.2f}, MedianR {median:g}"
        ax.plot(k_values, recall, drawstyle="steps-post", marker="o" if marks else None,
                markevery=marks or None,
                markersize=4, lw=1.8,
                label=f"{label} ({summary})" if label is not None else summary)
    if gallery_size is not None:
        ax.plot(k_values, np.minimum(k_values / gallery_size, 1.0), ls="--", color="0.5",
                lw=1.0, label="chance")
    if log_x and k_values[-1] > k_values[0]:
        ax.set_xscale("log")
    ax.set_xlim(float(k_values[0]), float(k_values[-1]))
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("k (tracks retrieved)")
    ax.set_ylabel("recall@k (true track in top k)")
    title = "Video-to-music retrieval"
    if gallery_size is not None:
        title += f" ({gallery_size} tracks)"
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize="small")
    return ax
