"""Accuracy at a fit budget, in every synthetic world: trivial, ridge, the paper's DETR head
and the default window head.

For each world of :func:`mgsv_sk.make_synthetic_mgsv` (``aligned``, ``signature``, ``hook``)
train on a synthetic train split and evaluate every protocol metric on a 2,000-video /
2,000-track test split of tracks never seen in training (the retrieval gallery is its
2,000 tracks, as on MGSV-EC). A budget fixes the training videos and epochs (both heads get
the same data and the epochs that fit the budget; the seconds each took are recorded).
Also recorded, per fit:

* per epoch, the validation metrics on the held-out tracks (unseen in training), R@1 and
  MoR@1 among them: how retrieval generalises as training goes on;
* for the window head, the calibration of ``moment_score`` on balanced pairs (each test
  video on its own track and on one other test track): expected calibration error and a
  10-bin reliability table;
* MsG top-1 when the top-10 tracks are re-ranked by ``score + w * logit(moment_score)``.

Writes ``benchmarks/results/accuracy_<budget>.json`` and ``.md``::

    python benchmarks/accuracy.py --budget 5min            # about 40 min on 2 cores
    python benchmarks/accuracy.py --budget 30min --worlds aligned --heads window
    python benchmarks/accuracy.py --budget 5min --heads window --identity --tag _identity

``--identity`` fits without the encoders' input standardisation (the encoders before it),
for comparison.

``--curves N`` instead fits the default window head for N epochs in each world with the
test split as ``fit(eval_set=...)``, recording validation and test metrics epoch by epoch;
it reports their rank correlation (Spearman) per world, the epoch early stopping keeps
under the defaults (replayed on the curve: stopping does not change the epochs before it)
and how far test R@1 falls below its peak. Writes ``accuracy_curves<tag>.json`` / ``.md``
and the picture ``docs/images/generalisation<tag>.png``::

    python benchmarks/accuracy.py --curves 20 --tag _20ep     # about 2 h 10 min alone

``--replay NAME`` re-derives a curve file's early-stopping figures, table and picture from
its recorded histories under the current defaults (after a change of the monitored metric
or the patience), without training::

    python benchmarks/accuracy.py --replay accuracy_curves_20ep

``--merge A,B --tag T`` puts the worlds of several curve files (each as it was summarised,
with its own setup note) in one ``accuracy_curves<T>`` file, table and picture.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mgsv_sk import MGSVGrounder, RidgeGrounder, TrivialGrounder, evaluate, make_synthetic_mgsv
from mgsv_sk.data.spans import temporal_iou
from mgsv_sk.data.synthetic import WORLDS

RESULTS = Path(__file__).parent / "results"
KEYS = ["mIoU", "IoU@0.3", "IoU@0.5", "IoU@0.7", "R@1", "R@5", "R@10", "R@25", "R@50", "R@100",
        "MedianR", "MeanR", "MRR", "MoR@1,0.5", "MoR@1,0.7", "MoR@10,0.5", "MoR@10,0.7",
        "MoR@100,0.5", "MoR@100,0.7"]
#: A budget: training videos / tracks and, per head, the epochs that fit in about that
#: long on 2 idle cores (an epoch of the DETR head costs about 2.5 of the window head's).
#: The window head's 5 minutes were 4 epochs until the re-layout's release; measured then
#: alone, 4 epochs took 165 s and 7 took 302 s on the hook world, so 6 fit.
BUDGETS = {
    "5min": {"train_videos": 6000, "train_tracks": 600, "epochs": {"window": 6, "detr": 2}},
    "30min": {"train_videos": 16000, "train_tracks": 1600,
              "epochs": {"window": 10, "detr": 4}},
    "smoke": {"train_videos": 300, "train_tracks": 40,  # checks the script
              "epochs": {"window": 1, "detr": 1}},
}
HEADS = ("window", "detr")
RERANK_WEIGHTS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5)


def calibration(model: MGSVGrounder, test: Any, seed: int = 0) -> dict[str, Any]:
    """ECE and reliability of moment_score on balanced pairs: every test video on its own
    track (label 1) and on one other test track (label 0)."""
    frame = test.frame
    rng = np.random.default_rng(seed)
    tracks = frame["music_id"].to_numpy()
    other = tracks[(np.arange(len(frame)) + rng.integers(1, len(frame), len(frame)))
                   % len(frame)]
    pos = model.predict(frame, features=test.features)["moment_score"].to_numpy()
    neg = model.predict(frame.assign(music_id=other), features=test.features)[
        "moment_score"].to_numpy()
    prob = np.concatenate([pos, neg])
    label = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    bins = np.minimum((prob * 10).astype(int), 9)
    table, ece = [], 0.0
    for b in range(10):
        inside = bins == b
        if inside.any():
            conf, acc = float(prob[inside].mean()), float(label[inside].mean())
            ece += inside.mean() * abs(conf - acc)
            table.append({"bin": f"{b / 10:.1f}-{(b + 1) / 10:.1f}", "n": int(inside.sum()),
                          "mean_score": conf, "share_true_track": acc})
    auc = float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())
    return {"ece": float(ece), "auc_true_vs_other_track": auc, "reliability": table}


def rerank(model: MGSVGrounder, test: Any, k: int = 10) -> dict[str, dict[str, float]]:
    """MsG top-1 (R@1, MoR@1 at 0.5 / 0.7) when the top-k are re-ranked by
    score + w * logit(moment_score), for each w of RERANK_WEIGHTS (w = 0: plain retrieval;
    the default ``moment_weight`` is one of them)."""
    frame = test.frame
    model.set_catalogue(frame["music_id"].unique(), features=test.features)  # the gallery
    ranked = model.rank(frame.drop(columns="music_id"), k=k, features=test.features,
                        moment_weight=0.0)  # plain retrieval scores, re-weighted below
    n = len(frame)
    score = ranked["score"].to_numpy().reshape(n, k)
    p = np.clip(ranked["moment_score"].to_numpy().reshape(n, k), 1e-6, 1 - 1e-6)
    logit = np.log(p) - np.log1p(-p)
    ids = ranked["music_id"].to_numpy().reshape(n, k)
    spans = ranked[["start", "end"]].to_numpy().reshape(n, k, 2)
    out = {}
    for w in RERANK_WEIGHTS:
        best = np.argmax(score + w * logit, axis=1)
        hit = ids[np.arange(n), best] == frame["music_id"].to_numpy()
        iou = temporal_iou(spans[np.arange(n), best],
                           frame[["music_start", "music_end"]].to_numpy(),
                           frame["music_total_duration"].to_numpy())
        out[f"w={w:g}"] = {"R@1": float(hit.mean()), "MoR@1,0.5": float((hit & (iou > 0.5)).mean()),
                           "MoR@1,0.7": float((hit & (iou > 0.7)).mean())}
    return out


#: Catalogue storage variants (states, first-stage index, X-Pool re-rank depth): the
#: accuracy cost of compact snippet states and an ANN first stage on the same model.
STORAGE = (("float32", "exact", None), ("float32", "exact", 100), ("float16", "exact", None),
           ("int8", "exact", None), ("int8", "exact", 100), ("int8", "hnsw", 100),
           ("int8", "ivf", 100))


def storage(model: MGSVGrounder, test: Any) -> dict[str, dict[str, float]]:
    """Every protocol rate of the fitted model served from each catalogue storage of
    STORAGE over the test gallery (float32 with a full X-Pool scan is the reference)."""
    gallery = test.frame["music_id"].unique()
    out: dict[str, dict[str, float]] = {}
    top_k = model.xpool_top_k
    try:
        for states, index, k in STORAGE:
            model.set_params(xpool_top_k=k)
            model.set_catalogue(gallery, features=test.features)
            model.compact_catalogue(states=states, index=index)
            label = f"{states} states, {index} first stage" + (
                f", X-Pool re-rank of the top {k}" if k else ", full X-Pool scan")
            tic = time.perf_counter()
            out[label] = {**evaluate(model, test.frame, features=test.features),
                          "eval_seconds": time.perf_counter() - tic}
            print(f"  storage {label}: mIoU {out[label]['mIoU']:.4f} R@1 {out[label]['R@1']:.4f}"
                  f" MoR@1,0.5 {out[label]['MoR@1,0.5']:.4f}", flush=True)
    finally:
        model.set_params(xpool_top_k=top_k)
    return out


#: The previous release's schedule (--previous-schedule): a cosine to zero at max_epochs,
#: raw weights, the fixed re-ranking weight.
PREVIOUS_SCHEDULE = {"lr_schedule": "cosine", "average_halflife": 0.0, "moment_weight": 0.05}


def run_world(world: str, budget: dict[str, Any], heads: list[str], threads: int,
              test_videos: int, with_storage: bool = False,
              previous: bool = False) -> dict[str, Any]:
    train = make_synthetic_mgsv(budget["train_videos"], budget["train_tracks"], world=world,
                                random_state=0)
    test = make_synthetic_mgsv(test_videos, test_videos, world=world, random_state=1,
                               split="test")
    rows: dict[str, dict[str, float]] = {}
    runs: dict[str, dict[str, Any]] = {}
    rows["trivial [0, video duration]"] = evaluate(TrivialGrounder().fit(train.frame),
                                                   test.frame, features=test.features)
    tic = time.perf_counter()
    ridge = RidgeGrounder(features=train.features).fit(train.frame)
    runs["ridge baseline"] = {"fit_seconds": time.perf_counter() - tic}
    rows["ridge baseline"] = evaluate(ridge, test.frame, features=test.features)
    for head in heads:
        name = "window head (default)" if head == "window" else "DETR head (paper)"
        tic = time.perf_counter()
        epochs = budget["epochs"][head]
        model = MGSVGrounder(features=train.features, detector=head,
                             max_epochs=epochs, patience=epochs, n_threads=threads,
                             random_state=0, **(PREVIOUS_SCHEDULE if previous else {})
                             ).fit(train.frame)
        fit_s = time.perf_counter() - tic
        tic = time.perf_counter()
        rows[name] = evaluate(model, test.frame, features=test.features)
        hist = pd.DataFrame(model.history_)
        runs[name] = {
            "fit_seconds": fit_s, "eval_seconds": time.perf_counter() - tic,
            "epochs": model.n_epochs_, "best_epoch": model.best_epoch_,
            "per_epoch_unseen_tracks": hist[[c for c in hist.columns if c in (
                "epoch", "seconds", "val_mIoU", "val_R@1", "val_R@10", "val_MoR@1,0.5",
                "val_MoR@10,0.5")]].to_dict("records"),
        }
        if head == "window":
            runs[name]["calibration"] = calibration(model, test)
            runs[name]["rerank_top10"] = rerank(model, test)
            if with_storage:
                runs[name]["catalogue_storage"] = storage(model, test)
        print(f"[{world}] {name}: fit {fit_s:.0f} s, mIoU {rows[name]['mIoU']:.3f} "
              f"R@1 {rows[name]['R@1']:.3f} MoR@1,0.5 {rows[name]['MoR@1,0.5']:.3f}", flush=True)
    return {"metrics": rows, "runs": runs}


#: The per-epoch metrics a curve run records for validation and test.
CURVE_KEYS = ("R@1", "R@10", "MRR", "MoR@1,0.5", "mIoU")


def kept_epoch(history: list[dict[str, float]], metric: str, patience: int) -> int:
    """The epoch early stopping keeps on this history: the fit loop's own rule, replayed."""
    return stopping_replay(history, metric, patience)[0]


def validation_videos(history: list[dict[str, float]]) -> int:
    """Videos of the validation split behind a history: recorded (``val_videos``), or for a
    curve recorded before that, the smallest count of which every epoch's validation R@1
    and MoR@1,0.5 are whole fractions."""
    if "val_videos" in history[0]:
        return int(history[0]["val_videos"])
    values = [row[k] for row in history for k in ("val_R@1", "val_MoR@1,0.5")]
    for n in range(1, 100_000):
        if all(abs(v * n - round(v * n)) < 1e-6 * n for v in values):
            return n
    raise ValueError("the history's validation size cannot be recovered")


def stopping_replay(history: list[dict[str, float]], metric: str, patience: int,
                    max_epochs: int | None = None) -> tuple[int, int]:
    """(kept epoch, epochs run) of a fit whose epochs are this history's, capped at
    ``max_epochs``: the fit loop's own rule, replayed (its near-tie tolerance from the
    validation split's size). Exact for the default schedule, whose epochs do not depend
    on ``max_epochs`` (a constant rate after warm-up)."""
    from mgsv_sk.evaluation.scoring import scorer_value
    from mgsv_sk.train._training import EarlyStopping, near_tie

    stopping = EarlyStopping(patience, near_tie(validation_videos(history)))
    run = 0
    for row in history[:max_epochs]:
        run += 1
        stopping.update(scorer_value(row, metric, prefix="val_"))
        if stopping.exhausted:
            break
    return stopping.best_epoch, run


#: The fixed ``max_epochs`` a default fit is compared with (``--curves``).
FIXED_EPOCHS = (3, 5, 8, 12, 20)
#: The test metrics of that comparison.
SCHEDULE_KEYS = ("R@1", "R@10", "MoR@1,0.5", "mIoU")


def schedule_table(hist: list[dict[str, float]],
                   seconds_per_epoch: float | None = None) -> dict[str, dict[str, float]]:
    """The defaults against each fixed ``max_epochs`` the curve covers, replayed on its
    history: the epochs run, their fit seconds (training and validation, not the test
    split's record; with ``seconds_per_epoch``, epochs run x that, for a curve whose
    recorded seconds a loaded machine inflated) and the test metrics of the weights each
    returns."""
    defaults = MGSVGrounder()
    metric, patience = defaults.early_stopping_metric, defaults.patience
    rows: dict[str, dict[str, float]] = {}
    label = "defaults"
    if defaults.max_epochs > len(hist):
        label = f"defaults (max_epochs={defaults.max_epochs}; the curve's {len(hist)} epochs)"
    settings = [(label, defaults.max_epochs, patience)] + [
        (f"max_epochs={n}", n, patience) for n in FIXED_EPOCHS if n <= len(hist)]
    budget = BUDGETS["5min"]["epochs"]["window"]
    if budget <= len(hist):  # the 5-minute budget: its epochs, no early stop (--budget 5min)
        settings.append((f"5-minute budget (max_epochs={budget}, patience={budget})", budget,
                         budget))
    for label, cap, setting_patience in settings:
        kept, run = stopping_replay(hist, metric, setting_patience, cap)
        seconds = (run * seconds_per_epoch if seconds_per_epoch else
                   sum(r["seconds"] - r.get("eval_seconds", 0.0) for r in hist[:run]))
        rows[label] = {"epochs_run": run, "kept_epoch": kept, "fit_seconds": seconds,
                       **{k: hist[kept - 1][f"eval0_{k}"] for k in SCHEDULE_KEYS}}
    return rows


def run_curves(world: str, budget: dict[str, Any], epochs: int, threads: int,
               test_videos: int, seed: int = 0, cosine: int = 0) -> dict[str, Any]:
    train = make_synthetic_mgsv(budget["train_videos"], budget["train_tracks"], world=world,
                                random_state=0)
    test = make_synthetic_mgsv(test_videos, test_videos, world=world, random_state=1,
                               split="test")
    tic = time.perf_counter()
    model = MGSVGrounder(features=train.features, max_epochs=epochs, patience=epochs,
                         n_threads=threads, random_state=seed)
    model.fit(train.frame, eval_set=(test.frame, test.features))
    out = summarise_curve(model.history_, time.perf_counter() - tic)
    if cosine:  # the previous release's schedule: a cosine to zero at max_epochs, raw weights
        tic = time.perf_counter()
        ref = MGSVGrounder(features=train.features, max_epochs=cosine, patience=cosine,
                           n_threads=threads, random_state=seed,
                           **PREVIOUS_SCHEDULE).fit(train.frame)
        fit_s = time.perf_counter() - tic
        report = evaluate(ref, test.frame, features=test.features)
        out["cosine_reference"] = {"max_epochs": cosine, "fit_seconds": fit_s,
                                   **{k: report[k] for k in SCHEDULE_KEYS}}
    es = out["early_stopping"]
    print(f"[{world}] {epochs} epochs in {out['fit_seconds']:.0f} s; kept epoch "
          f"{es['kept_epoch']} (test R@1 {es['test_R@1_kept']:.3f}, best "
          f"{es['test_R@1_best']:.3f} at {es['best_epoch']}); spearman R@1 "
          f"{out['spearman_val_test']['R@1']:.2f}", flush=True)
    return out


def summarise_curve(hist: list[dict[str, float]], seconds: float,
                    seconds_per_epoch: float | None = None) -> dict[str, Any]:
    """A curve run's record: per-epoch validation and test metrics, their rank correlation,
    the epoch early stopping keeps under the current defaults (replayed on the history:
    ``patience`` does not change the schedule, so the replay is what a default fit
    keeps), and how far test R@1 falls below its running peak."""
    from scipy.stats import spearmanr

    defaults = MGSVGrounder()
    test_r1 = np.array([row["eval0_R@1"] for row in hist])
    kept = kept_epoch(hist, defaults.early_stopping_metric, defaults.patience)
    return {
        "fit_seconds": seconds,
        "epochs": [{"epoch": int(row["epoch"]), "seconds": row["seconds"],
                    "val_gallery_tracks": row["val_gallery_tracks"],
                    **{f"val_{k}": row[f"val_{k}"] for k in CURVE_KEYS},
                    **{f"test_{k}": row[f"eval0_{k}"] for k in CURVE_KEYS}} for row in hist],
        # every column the fit recorded, so another early-stopping rule can be replayed
        "history": [{k: v for k, v in row.items() if isinstance(v, (int, float))}
                    for row in hist],
        "spearman_val_test": {k: float(spearmanr([r[f"val_{k}"] for r in hist],
                                                 [r[f"eval0_{k}"] for r in hist])[0])
                              for k in CURVE_KEYS},
        "early_stopping": {"metric": defaults.early_stopping_metric,
                           "patience": defaults.patience, "kept_epoch": kept,
                           "test_R@1_kept": float(test_r1[kept - 1]),
                           "test_R@1_best": float(test_r1.max()),
                           "best_epoch": int(np.argmax(test_r1)) + 1},
        "test_R@1_largest_fall_below_peak": float(
            np.max(np.maximum.accumulate(test_r1) - test_r1)),
        "schedules": schedule_table(hist, seconds_per_epoch),
    }


def curves_markdown(results: dict[str, Any]) -> str:
    out = ["| world | epochs | fit s | val gallery | kept epoch (metric, patience) | "
           "test R@1 kept / best (epoch) | largest fall below peak | "
           "Spearman val/test R@1 | MoR@1,0.5 | MRR |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for world, res in results["worlds"].items():
        es, rho = res["early_stopping"], res["spearman_val_test"]
        out.append(f"| {world} | {len(res['epochs'])} | {res['fit_seconds']:.0f} | "
                   f"{res['epochs'][0]['val_gallery_tracks']:.0f} | {es['kept_epoch']} "
                   f"({es['metric']}, {es['patience']}) | "
                   f"{es['test_R@1_kept']:.3f} / {es['test_R@1_best']:.3f} "
                   f"({es['best_epoch']}) | {res['test_R@1_largest_fall_below_peak']:.3f} | "
                   f"{rho['R@1']:.2f} | {rho['MoR@1,0.5']:.2f} | {rho['MRR']:.2f} |")
    out.append("")
    for world, res in results["worlds"].items():
        if "schedules" not in res:
            continue
        out.append(f"### {world}: the defaults against fixed max_epochs (test, unseen tracks)\n")
        out.append("| setting | epochs run | kept | fit s | " + " | ".join(SCHEDULE_KEYS) + " |")
        out.append("|---|---|---|---|" + "---|" * len(SCHEDULE_KEYS))
        for label, row in res["schedules"].items():
            out.append(f"| {label} | {row['epochs_run']} | {row['kept_epoch']} | "
                       f"{row['fit_seconds']:.0f} | "
                       + " | ".join(f"{row[k]:.3f}" for k in SCHEDULE_KEYS) + " |")
        ref = res.get("cosine_reference")
        if ref:
            out.append(f"| previous schedule: cosine over max_epochs={ref['max_epochs']}, raw "
                       f"weights | {ref['max_epochs']} | {ref['max_epochs']} | "
                       f"{ref['fit_seconds']:.0f} | "
                       + " | ".join(f"{ref[k]:.3f}" for k in SCHEDULE_KEYS) + " |")
        out.append("")
    for world, res in results["worlds"].items():
        out.append(f"### {world}: per epoch (validation / test on unseen tracks)\n")
        out.append("| epoch | s | " + " | ".join(f"val {k} | test {k}" for k in CURVE_KEYS)
                   + " |")
        out.append("|---|---|" + "---|---|" * len(CURVE_KEYS))
        for row in res["epochs"]:
            out.append(f"| {row['epoch']} | {row['seconds']:.0f} | " + " | ".join(
                f"{row[f'val_{k}']:.3f} | {row[f'test_{k}']:.3f}" for k in CURVE_KEYS) + " |")
        out.append("")
    return "\n".join(out) + "\n"


def write_curves(name: str, results: dict[str, Any]) -> None:
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(curves_markdown(results))
    images = Path(__file__).parents[1] / "docs" / "images"
    draw_curves(results, images / f"{name.replace('accuracy_curves', 'generalisation')}.png")
    if all("schedules" in res for res in results["worlds"].values()):
        draw_budget(results, images / f"{name.replace('accuracy_curves', 'fit_budget')}.png")


def draw_budget(results: dict[str, Any], path: Path) -> None:
    """Test R@1 against fit seconds: the defaults (stars) and each fixed max_epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mgsv_sk.plot import plot_fit_budget

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), layout="constrained")
    for ax, metric in zip(axes, ("R@1", "mIoU")):
        fits = {w: {label: {"fit_seconds": r["fit_seconds"], metric: r[metric]}
                    for label, r in res["schedules"].items()}
                for w, res in results["worlds"].items()}
        plot_fit_budget(fits, metric=metric, ax=ax)
        ax.set_title(f"test {metric} on unseen tracks against fit seconds", fontsize="medium")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def replay(name: str, seconds_per_epoch: float | None = None) -> None:
    results = json.loads((RESULTS / f"{name}.json").read_text())
    for world, res in results["worlds"].items():
        if "history" not in res:
            raise SystemExit(f"{name}.json records no full history for {world}; "
                             "run the curves again to replay them")
        results["worlds"][world] = {**summarise_curve(res["history"], res["fit_seconds"],
                                                    seconds_per_epoch),
                                    **({"cosine_reference": res["cosine_reference"]}
                                       if "cosine_reference" in res else {})}
    write_curves(name, results)
    print(curves_markdown(results))


def merge(names: list[str], tag: str) -> None:
    """The worlds of several curve files in one (a world in two files: the later one's)."""
    merged: dict[str, Any] = {"setup": {"merged_from": {}}, "worlds": {}}
    for name in names:
        results = json.loads((RESULTS / f"{name}.json").read_text())
        if not all("schedules" in res for res in results["worlds"].values()):
            raise SystemExit(f"{name}.json holds no schedule table; --replay it first")
        merged["setup"] = {**results["setup"], "merged_from": {
            **merged["setup"]["merged_from"],
            name: {**results["setup"], "worlds": list(results["worlds"])}}}
        merged["worlds"].update(results["worlds"])
    write_curves(f"accuracy_curves{tag}", merged)
    print(curves_markdown(merged))


def draw_curves(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from mgsv_sk.plot import plot_generalisation

    histories = {w: [{"epoch": r["epoch"], "val_R@1": r["val_R@1"], "eval0_R@1": r["test_R@1"]}
                     for r in res["epochs"]] for w, res in results["worlds"].items()}
    kept = {w: res["early_stopping"]["kept_epoch"] for w, res in results["worlds"].items()}
    ax = plot_generalisation(histories, best_epochs=kept)
    n_test = results["setup"]["test_videos"]
    ax.set_title("R@1 per epoch: validation (dashed, held-out + training tracks) and\n"
                 f"test on {n_test:,} unseen tracks (solid); circle: the epoch early "
                 "stopping keeps", fontsize="medium")
    path.parent.mkdir(parents=True, exist_ok=True)
    ax.figure.savefig(path, dpi=110, bbox_inches="tight")


def markdown(results: dict[str, Any]) -> str:
    out = []
    for world, res in results["worlds"].items():
        out.append(f"### world: {world}\n")
        out.append("| model | fit s | " + " | ".join(KEYS) + " |")
        out.append("|---|---|" + "---|" * len(KEYS))
        for name, report in res["metrics"].items():
            fit = res["runs"].get(name, {}).get("fit_seconds")
            cells = ["—" if k not in report else  # a run that recorded fewer metrics
                     f"{report[k]:.1f}" if k in ("MedianR", "MeanR") else f"{report[k]:.3f}"
                     for k in KEYS]
            out.append(f"| {name} | {'' if fit is None else f'{fit:.0f}'} | "
                       + " | ".join(cells) + " |")
        out.append("")
        variants = res["runs"].get("window head (default)", {}).get("catalogue_storage")
        if variants:
            out.append(f"Window head served from each catalogue storage ({world}):\n")
            out.append("| catalogue | " + " | ".join(KEYS) + " |")
            out.append("|---|" + "---|" * len(KEYS))
            for label, report in variants.items():
                out.append(f"| {label} | " + " | ".join(
                    f"{report[k]:.1f}" if k in ("MedianR", "MeanR") else f"{report[k]:.4f}"
                    for k in KEYS) + " |")
            out.append("")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="5min")
    parser.add_argument("--worlds", default=",".join(WORLDS))
    parser.add_argument("--heads", default=",".join(HEADS))
    parser.add_argument("--test-videos", type=int, default=2000)
    parser.add_argument("--n-threads", type=int, default=2)
    parser.add_argument("--tag", default="", help="suffix of the results files")
    parser.add_argument("--curves", type=int, default=0, metavar="EPOCHS",
                        help="record validation and test curves of the default window head "
                             "over EPOCHS epochs instead of the budget table")
    parser.add_argument("--cosine-reference", type=int, default=0, metavar="EPOCHS",
                        help="with --curves: also fit the previous release's schedule (a "
                             "cosine to zero at EPOCHS, raw weights) for comparison")
    parser.add_argument("--seconds-per-epoch", type=float, default=None,
                        help="with --replay: fit seconds as epochs run x this (for a curve "
                             "recorded on a loaded machine; say so where you show them)")
    parser.add_argument("--seed", type=int, default=0,
                        help="the curve fit's random_state (initialisation, batches); the "
                             "data stay the same")
    parser.add_argument("--replay", metavar="NAME",
                        help="re-derive the early-stopping figures of results/NAME.json "
                             "under the current defaults, without training")
    parser.add_argument("--merge", metavar="NAMES",
                        help="comma-separated curve files (results/NAME.json) to put in one, "
                             "accuracy_curves<--tag>")
    parser.add_argument("--previous-schedule", action="store_true",
                        help="fit with the previous release's schedule (a cosine to zero at "
                             "max_epochs, raw weights, the fixed re-ranking weight 0.05), for "
                             "comparison")
    parser.add_argument("--storage", action="store_true",
                        help="also evaluate the window head from compact catalogue states and "
                             "ANN first stages (needs faiss-cpu)")
    parser.add_argument("--identity", action="store_true",
                        help="fit without the encoders' input standardisation, for comparison")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.n_threads)
    if args.identity:
        from feature_scale import without_standardisation  # this folder

        without_standardisation()
    budget = BUDGETS[args.budget]
    worlds = [w for w in args.worlds.split(",") if w]
    heads = [h for h in args.heads.split(",") if h]
    results: dict[str, Any] = {
        "setup": {"budget": args.budget, **budget, "test_videos": args.test_videos,
                  "gallery": args.test_videos, "threads": args.n_threads,
                  "torch": torch.__version__, "machine": platform.machine(),
                  "note": "test tracks are never seen in training; both heads get the same "
                          "videos, and the epochs that fit the budget",
                  "schedule": "previous (cosine to zero, raw weights, moment_weight 0.05)"
                              if args.previous_schedule else "defaults",
                  "input_standardisation": not args.identity},
        "worlds": {},
    }
    RESULTS.mkdir(exist_ok=True)
    if args.replay:
        replay(args.replay, args.seconds_per_epoch)
        return
    if args.merge:
        merge([n for n in args.merge.split(",") if n], args.tag)
        return
    if args.curves:
        name = f"accuracy_curves{args.tag}"
        results["setup"]["curve_epochs"] = args.curves
        results["setup"]["seed"] = args.seed
        for world in worlds:
            results["worlds"][world] = run_curves(world, budget, args.curves, args.n_threads,
                                                  args.test_videos, args.seed,
                                                  args.cosine_reference)
            write_curves(name, results)
        print(curves_markdown(results))
        return
    name = f"accuracy_{args.budget}{args.tag}"
    for world in worlds:
        results["worlds"][world] = run_world(world, budget, heads, args.n_threads,
                                             args.test_videos, args.storage,
                                             args.previous_schedule)
        # written after every world, so a long run that is stopped keeps what it measured
        (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
        (RESULTS / f"{name}.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
