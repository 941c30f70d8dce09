"""Accuracy on a synthetic MGSV-EC set: the default MaDe model vs the trivial and ridge baselines.

Train on a synthetic train split, evaluate every protocol metric on a 2,000-video /
2,000-track test split (the retrieval gallery is its 2,000 tracks, as on MGSV-EC). Writes
``benchmarks/results/accuracy{tag}.json`` and ``.md``. About 30 minutes on 2 idle cores
with the defaults (16,000 videos / 1,600 tracks, 8 epochs, fp32); ``--bf16`` adds a fit
with bf16 autocast (about 0.7x the time):

    python benchmarks/accuracy.py [--train-videos 16000] [--max-epochs 8] [--bf16] [--int8]
                                  [--tag T]

``--int8`` exports the fp32 model with ``quantize=True`` and adds the onnxruntime fp32 and
int8 rows (same test set and gallery), so int8's accuracy cost is measured on a trained
model.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mgsv_sk import MGSVGrounder, RidgeGrounder, TrivialGrounder, evaluate, make_synthetic_mgsv

RESULTS = Path(__file__).parent / "results"
KEYS = ["mIoU", "IoU@0.3", "IoU@0.5", "IoU@0.7", "R@1", "R@5", "R@10", "R@25", "R@50", "R@100",
        "MedianR", "MeanR", "MRR", "MoR@1,0.5", "MoR@1,0.7", "MoR@10,0.5", "MoR@10,0.7",
        "MoR@100,0.5", "MoR@100,0.7"]


def markdown(rows: dict[str, dict[str, float]]) -> str:
    head = "| model | " + " | ".join(KEYS) + " |\n|---|" + "---|" * len(KEYS) + "\n"
    body = ""
    for name, report in rows.items():
        cells = [f"{report[k]:.1f}" if k in ("MedianR", "MeanR") else f"{report[k]:.3f}"
                 for k in KEYS]
        body += f"| {name} | " + " | ".join(cells) + " |\n"
    return head + body


def onnx_rows(model: MGSVGrounder, test: Any, threads: int) -> dict[str, dict[str, float]]:
    """The protocol's metrics of the exported model served by onnxruntime, fp32 and int8."""
    from export.runtime import OnnxGrounder
    from export.to_onnx import export_onnx

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        bundle = export_onnx(model, Path(tmp) / "bundle", quantize=True)
        for precision in ("fp32", "int8"):
            served = OnnxGrounder.load(bundle, threads, precision=precision)
            out[f"MaDe, onnxruntime {precision}"] = evaluate(served, test.frame,
                                                             features=test.features)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-videos", type=int, default=16000)
    parser.add_argument("--train-tracks", type=int, default=1600)
    parser.add_argument("--test-videos", type=int, default=2000)
    parser.add_argument("--max-epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--bf16", action="store_true", help="also fit with bf16 autocast")
    parser.add_argument("--int8", action="store_true",
                        help="also evaluate the exported model with onnxruntime, fp32 and int8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tag", default="", help="suffix of the results files")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)

    train = make_synthetic_mgsv(args.train_videos, args.train_tracks, random_state=0)
    test = make_synthetic_mgsv(args.test_videos, args.test_videos, random_state=1, split="test")
    rows: dict[str, dict[str, float]] = {}
    info: dict[str, dict[str, float]] = {}

    rows["trivial [0, video duration]"] = evaluate(TrivialGrounder().fit(train.frame), test.frame,
                                                   features=test.features)
    tic = time.perf_counter()
    ridge = RidgeGrounder(features=train.features).fit(train.frame)
    rows["ridge baseline"] = evaluate(ridge, test.frame, features=test.features)
    info["ridge baseline"] = {"fit_seconds": time.perf_counter() - tic}

    variants = [("MaDe (default, fp32)", False)] + ([("MaDe (default, bf16)", True)]
                                                    if args.bf16 else [])
    for name, bf16 in variants:
        tic = time.perf_counter()
        model = MGSVGrounder(features=train.features, batch_size=args.batch_size,
                             max_epochs=args.max_epochs, patience=3, bf16=bf16,
                             random_state=0, verbose=0).fit(train.frame)
        fit_s = time.perf_counter() - tic
        tic = time.perf_counter()
        rows[name] = evaluate(model, test.frame, features=test.features)
        info[name] = {"fit_seconds": fit_s, "eval_seconds": time.perf_counter() - tic,
                      "epochs": model.n_epochs_, "best_epoch": model.best_epoch_}
        print(f"{name}: fit {fit_s:.0f} s, {model.n_epochs_} epochs, "
              f"mIoU {rows[name]['mIoU']:.3f} R@1 {rows[name]['R@1']:.3f}", flush=True)
        if args.int8 and not bf16:
            rows.update(onnx_rows(model, test, args.threads))

    result = {
        "setup": {"train_videos": args.train_videos, "train_tracks": args.train_tracks,
                  "test_videos": args.test_videos, "gallery": args.test_videos,
                  "max_epochs": args.max_epochs, "batch_size": args.batch_size,
                  "threads": args.threads, "torch": torch.__version__,
                  "machine": platform.machine()},
        "metrics": rows,
        "runs": info,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"accuracy{args.tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(rows)
    (RESULTS / f"accuracy{args.tag}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
