"""Training throughput of MGSVGrounder at the default architecture: samples/s and peak RSS.

Batch 128, 2 threads, one epoch through the real fit loop on synthetic data with the real
length statistics (about 23 of 50 frames and 56 of 96 snippets valid). Each configuration
runs in its own process, so its peak RSS is its own:

- ``full padding``: every batch padded to 50 frames / 96 snippets and drawn at random, as
  the public implementation does (the reference of the ratios, measured in the same run);
- ``grouped fp32``: length-grouped batches padded to their longest item;
- ``grouped bf16``: the same under bfloat16 autocast.

Writes ``benchmarks/results/train_speed.json``.

    python benchmarks/train_speed.py [--samples 3072] [--n-threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "train_speed.json"
CONFIGS = {
    "full padding": {"full_padding": True, "bf16": False},
    "grouped fp32": {"full_padding": False, "bf16": False},
    "grouped bf16": {"full_padding": False, "bf16": True},
}


def child(name: str, samples: int, threads: int, batch: int) -> None:
    """Train one epoch in this process and print a JSON line with the figures."""
    import numpy as np
    import torch

    import mgsv_sk.train._batching as batching
    import mgsv_sk.train._training as training
    from mgsv_sk import MGSVGrounder, make_synthetic_mgsv
    from mgsv_sk.data.spans import MAX_MUSIC_SNIPPETS, MAX_VIDEO_FRAMES

    cfg = CONFIGS[name]
    if cfg["full_padding"]:
        plain_pad = batching.pad_stack

        def pad_full(arrays):  # pad to the feature files' full length, as the release does
            full = MAX_VIDEO_FRAMES if arrays[0].shape[1] == 512 else MAX_MUSIC_SNIPPETS
            padded = [np.vstack([a, np.zeros((full - len(a), a.shape[1]), a.dtype)])
                      for a in arrays]
            out, _ = plain_pad(padded)
            mask = torch.zeros(out.shape[:2], dtype=torch.bool)
            for i, a in enumerate(arrays):
                mask[i, : len(a)] = True
            return out, mask

        def random_batches(lengths, batch_size, rng, pool=50):
            order = rng.permutation(len(lengths))
            return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

        batching.pad_stack = pad_full
        training.length_grouped_batches = random_batches

    data = make_synthetic_mgsv(samples, max(1, samples // 14), random_state=0)
    est = MGSVGrounder(features=data.features, batch_size=batch, max_epochs=1,
                       validation_fraction=0.0, bf16=cfg["bf16"], n_threads=threads,
                       random_state=0)
    est.fit(data.frame)
    seconds = est.history_[0]["seconds"]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"name": name, "samples_per_s": samples / seconds,
                      "epoch_seconds": seconds, "peak_rss_mb": peak_mb,
                      "final_loss": est.history_[0]["train_total"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3072)
    parser.add_argument("--n-threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--only", default=None, help="run one configuration in-process")
    args = parser.parse_args()
    if args.only:
        child(args.only, args.samples, args.n_threads, args.batch)
        return
    rows = {}
    for name in CONFIGS:
        out = subprocess.run(
            [sys.executable, __file__, "--only", name, "--samples", str(args.samples),
             "--n-threads", str(args.n_threads), "--batch", str(args.batch)],
            check=True, capture_output=True, text=True,
        ).stdout.strip().splitlines()[-1]
        rows[name] = json.loads(out)
        print(f"{name:14s} {rows[name]['samples_per_s']:7.1f} samples/s  "
              f"peak RSS {rows[name]['peak_rss_mb']:7.0f} MB", flush=True)
    ref = rows["full padding"]["samples_per_s"]
    for row in rows.values():
        row["speedup_vs_full_padding"] = row["samples_per_s"] / ref
    result = {"setup": {"batch": args.batch, "threads": args.n_threads, "samples": args.samples,
                        "architecture": "default (d 256, 2 enc / 6 dec, 8 heads)",
                        "machine": platform.machine(), "python": platform.python_version(),
                        "max_rss_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                        / 1024},
              "runs": rows,
              "targets": {"samples_per_s": 45, "peak_rss_mb": 3072}}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
