"""Which rule should choose the re-ranking weight (``moment_weight="auto"``)?

Per world: the default MGSVGrounder fitted for the 5-minute budget's 6 epochs on 6,000
videos / 600 tracks; then ``rank(k=10, moment_weight=0)`` (each video's best 10 tracks by
retrieval score, with the moment score of each) on a 2,000-video test split of unseen
tracks and on 3 validation-sized splits (600 videos / 600 other unseen tracks, seeds 2-4).
Each rule picks a weight on a validation split; the table is test R@1 at that weight. The
rules: the fit's own (best R@1 on the coarse grid of ``mgsv_sk.train._fusion.WEIGHTS``,
ties by MRR), the best MRR on that grid, and R@1 or MRR on a finer grid of 15 weights,
plain or averaged over each weight's two neighbours.

    python benchmarks/fusion_rules.py noisy[,crowded,...]

Writes ``benchmarks/results/fusion_rules.json`` (one record per world, as it finishes).
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from retrieval_limits import candidates  # this folder: the same candidate arrays

from mgsv_sk import MGSVGrounder, make_synthetic_mgsv
from mgsv_sk.train._fusion import WEIGHTS as COARSE

torch.set_num_threads(2)
RESULTS = Path(__file__).parent / "results" / "fusion_rules.json"
FINE = (0.0, 0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0)

def curve(a: tuple[np.ndarray, ...], weights: tuple[float, ...]
          ) -> tuple[np.ndarray, np.ndarray]:
    """R@1 and MRR (0 for a video whose track is not among its 10) at each weight."""
    score, logit, hit = a
    r1, mrr = [], []
    for w in weights:
        order = np.argsort(-(score + w * logit), axis=1, kind="stable")
        h = np.take_along_axis(hit, order, axis=1)
        r1.append(h[:, 0].mean())
        mrr.append(np.where(h.any(1), 1.0 / (h.argmax(1) + 1), 0.0).mean())
    return np.array(r1), np.array(mrr)


def pick(weights: tuple[float, ...], key: list) -> float:
    """The weight with the best key (ties: the smaller weight)."""
    return weights[max(range(len(weights)), key=lambda i: (key[i], -weights[i]))]


def smoothed(values: np.ndarray) -> list[float]:
    """Each value averaged with its two neighbours (the ends repeated)."""
    return list(np.convolve(np.pad(values, 1, mode="edge"), np.ones(3) / 3, mode="valid"))


def rules(val: tuple[np.ndarray, ...]) -> dict[str, float]:
    r1c, mrrc = curve(val, COARSE)
    r1f, mrrf = curve(val, FINE)
    return {"r1_coarse (current)": pick(COARSE, list(zip(r1c, mrrc))),
            "mrr_coarse": pick(COARSE, list(mrrc)),
            "r1_fine": pick(FINE, list(r1f)),
            "mrr_fine": pick(FINE, list(mrrf)),
            "r1_fine_smoothed": pick(FINE, smoothed(r1f)),
            "mrr_fine_smoothed": pick(FINE, smoothed(mrrf))}


def main() -> None:
    out = {}
    for world in sys.argv[1].split(","):
        train = make_synthetic_mgsv(6000, 600, world=world, random_state=0)
        test = make_synthetic_mgsv(2000, 2000, world=world, random_state=1, split="test")
        tic = time.perf_counter()
        model = MGSVGrounder(features=train.features, max_epochs=6, patience=6, n_threads=2,
                             random_state=0).fit(train.frame)
        fit_s = time.perf_counter() - tic
        on_test = candidates(model, test, 10)
        test_at = dict(zip(FINE + COARSE, np.concatenate([curve(on_test, FINE)[0],
                                                          curve(on_test, COARSE)[0]])))
        rec = {"fit_s": fit_s, "auto_weight": model.moment_weight_,
               "test_R@1_by_w": {f"{w:g}": float(v) for w, v in sorted(test_at.items())},
               "choices": []}
        for seed in (2, 3, 4):
            val = make_synthetic_mgsv(600, 600, world=world, random_state=seed, split="test")
            rec["choices"].append({rule: {"w": w, "test_R@1": float(test_at[w])}
                                   for rule, w in rules(candidates(model, val, 10)).items()})
        out[world] = rec
        print(world, json.dumps(rec), flush=True)
        RESULTS.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
