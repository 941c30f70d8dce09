"""What limits retrieval on tracks never seen in training: one world, one data budget, the
default window head against single changes of a regularisation or batch parameter.

Every variant trains on the same synthetic train split (the 5-minute budget's 6,000 videos
over 600 tracks) for the same number of epochs and is evaluated with :func:`mgsv_sk.evaluate`
(the defaults: re-ranking by the moment score included) on a 2,000-video test split of
2,000 unseen tracks. Writes ``benchmarks/results/retrieval_ablation_<world>.json`` / ``.md``::

    python benchmarks/retrieval_ablation.py --world hook            # about 30 min on 2 cores
    python benchmarks/retrieval_ablation.py --world noisy --epochs 6 --variants memory0,base
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mgsv_sk import MGSVGrounder, evaluate, make_synthetic_mgsv  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
#: name -> the parameters it changes from the defaults
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "wd0.01": {"weight_decay": 0.01},
    "wd0.1": {"weight_decay": 0.1},
    "batch128": {"batch_size": 128},
    "input_dropout0.2": {"input_dropout": 0.2},
    "temporal_dropout0.3": {"temporal_dropout": 0.3},
    "temperature0.07": {"temperature_init": 0.07},
    "lr2e-3": {"lr": 2e-3},
    "memory0": {"memory_tracks": 0},  # no cross-batch memory: in-batch negatives only
    "memory256": {"memory_tracks": 256},
}
METRICS = ("mIoU", "R@1", "R@10", "MRR", "MoR@1,0.5")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", default="hook")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-videos", type=int, default=6000)
    parser.add_argument("--train-tracks", type=int, default=600)
    parser.add_argument("--test-videos", type=int, default=2000)
    parser.add_argument("--n-threads", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--tag", default="", help="suffix of the results files")
    args = parser.parse_args()
    train = make_synthetic_mgsv(args.train_videos, args.train_tracks, world=args.world,
                                random_state=0)
    test = make_synthetic_mgsv(args.test_videos, args.test_videos, world=args.world,
                               random_state=1, split="test")
    out: dict[str, Any] = {
        "setup": {"world": args.world, "epochs": args.epochs,
                  "train_videos": args.train_videos, "train_tracks": args.train_tracks,
                  "test_videos": args.test_videos, "test_tracks": args.test_videos,
                  "n_threads": args.n_threads, "platform": platform.platform()},
        "variants": {},
    }
    path = RESULTS / f"retrieval_ablation_{args.world}{args.tag}.json"
    for name in [v for v in args.variants.split(",") if v]:
        params = VARIANTS[name]
        tic = time.perf_counter()
        model = MGSVGrounder(features=train.features, max_epochs=args.epochs,
                             patience=args.epochs, n_threads=args.n_threads, random_state=0,
                             **params).fit(train.frame)
        fit_s = time.perf_counter() - tic
        scores = evaluate(model, test.frame, features=test.features)
        plain = evaluate(model.set_params(moment_weight=0), test.frame,
                         features=test.features, retrieval=True, grounding=False)
        row = {"params": params, "fit_seconds": round(fit_s, 1),
               **{m: round(float(scores[m]), 4) for m in METRICS},
               "R@1 without re-ranking": round(float(plain["R@1"]), 4),
               "val_R@1 per epoch": [round(float(h.get("val_R@1", float("nan"))), 4)
                                     for h in model.history_]}
        out["variants"][name] = row
        print(f"{name}: fit {fit_s:.0f} s " + " ".join(f"{m} {row[m]:.3f}" for m in METRICS),
              flush=True)
        path.write_text(json.dumps(out, indent=1))  # kept as it grows
    lines = [f"# Retrieval ablation, world {args.world}: {args.epochs} epochs on "
             f"{args.train_videos} videos / {args.train_tracks} tracks; test "
             f"{args.test_videos} videos on as many unseen tracks", "",
             "| variant | fit s | " + " | ".join(METRICS) + " | R@1 plain |",
             "|---" * (len(METRICS) + 3) + "|"]
    for name, row in out["variants"].items():
        lines.append(f"| {name} | {row['fit_seconds']:.0f} | "
                     + " | ".join(f"{row[m]:.3f}" for m in METRICS)
                     + f" | {row['R@1 without re-ranking']:.3f} |")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
