"""What limits retrieval on unseen tracks: hubness, and the fusion with the moment score?

Hubness: in a high-dimensional score space a few tracks come out on top for many videos
(hubs), and the tracks that should win lose to them. The query-bank correction (inverted
softmax, as in QB-Norm) measures it on videos the model has seen, a bank of training
videos scored against the catalogue, and lowers each track's score by how strongly the
bank as a whole already prefers it::

    score'(v, t) = score(v, t) - logsumexp_b(beta * score(b, t)) / beta

It needs no test video but the one being ranked (a service can apply it: the correction
is one number per track, computed when the catalogue is set), and no new fit.

Per world: the default MGSVGrounder fitted for ``--epochs`` epochs on the accuracy
benchmark's 5-minute data (6,000 videos on 600 tracks), then its retrieval scores (no
re-ranking: ``moment_weight=0``) of the 2,000 test videos against their 2,000 unseen
tracks, plain and corrected at each ``beta``, with a bank of ``--bank`` training videos;
and how concentrated the top-1 answers are (the most a single track is ranked first, and
the share of tracks never ranked first).

Fusion: ranking re-orders each video's best ``rerank_depth`` tracks by ``score +
moment_weight * logit(moment_score)`` (defaults 10 and 0.05 with the window head). From
one ``rank(k=30, moment_weight=0)`` (the retrieval order with the moment head's score of
each of the 30) the benchmark replays R@1 at every weight and depth in a grid, to see how
far the fixed default is from the best fusion on tracks never seen in training.

    python benchmarks/retrieval_limits.py [--worlds crowded,noisy] [--epochs 5] [--bank 2000]

Writes ``benchmarks/results/retrieval_limits.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mgsv_sk import MGSVGrounder, make_synthetic_mgsv

RESULTS = Path(__file__).parent / "results"
NAME = "retrieval_limits"
WEIGHTS = (0.0, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0)
DEPTHS = (10, 20, 30)


def retrieval(scores: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """R@1, R@10, MRR and top-1 concentration of a (videos, tracks) score table."""
    own = scores[np.arange(len(truth)), truth]
    rank0 = (scores > own[:, None]).sum(axis=1)
    top1 = np.bincount(scores.argmax(axis=1), minlength=scores.shape[1])
    return {"R@1": float(np.mean(rank0 < 1)), "R@10": float(np.mean(rank0 < 10)),
            "MRR": float(np.mean(1.0 / (rank0 + 1))), "most_top1": int(top1.max()),
            "never_top1": float(np.mean(top1 == 0))}


def candidates(model: MGSVGrounder, data: Any, depth: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``data`` ranked against its own tracks by retrieval score alone: each video's best
    ``depth`` tracks, their scores, the logits of their moment scores and whether each is
    the video's own track, (videos, depth) each."""
    model.set_catalogue(list(dict.fromkeys(data.frame["music_id"])), features=data.features)
    ranked = model.rank(data.frame, k=depth, features=data.features, moment_weight=0)
    truth = dict(zip(data.frame["video_id"], data.frame["music_id"]))
    groups = [g for _, g in ranked.groupby("video_id", sort=False)]
    score = np.stack([g["score"].to_numpy(np.float64) for g in groups])  # [n, depth]
    p = np.clip(np.stack([g["moment_score"].to_numpy(np.float64) for g in groups]),
                1e-6, 1 - 1e-6)
    hit = np.stack([(g["music_id"] == truth[g["video_id"].iloc[0]]).to_numpy()
                    for g in groups])
    return score, np.log(p) - np.log1p(-p), hit


def fusion_grid(model: MGSVGrounder, data: Any) -> dict[str, dict[str, float]]:
    """R@1 of ``score + w * logit(moment_score)`` over each video's best ``d`` tracks (the
    rest keep their retrieval order below them), for every w in WEIGHTS and d in DEPTHS,
    on ``data`` ranked against its own tracks."""
    score, logit, hit = candidates(model, data, max(DEPTHS))
    out: dict[str, dict[str, float]] = {}
    for d in DEPTHS:
        out[f"depth {d}"] = {}
        for w in WEIGHTS:
            best = np.argmax(score[:, :d] + w * logit[:, :d], axis=1)
            out[f"depth {d}"][f"{w:g}"] = float(hit[np.arange(len(hit)), best].mean())
    return out


def corrected(test: np.ndarray, bank: np.ndarray, beta: float) -> np.ndarray:
    """Inverted softmax over the bank: each track's score lowered by its bank log-mass."""
    scaled = beta * bank.astype(np.float64)
    top = scaled.max(axis=0)
    mass = (top + np.log(np.exp(scaled - top).sum(axis=0))) / beta  # [N]
    return test - mass[None, :]


def run_world(world: str, epochs: int, bank_size: int, betas: list[float], threads: int,
              sizes: tuple[int, int, int] = (6000, 600, 2000)) -> dict[str, Any]:
    train = make_synthetic_mgsv(sizes[0], sizes[1], world=world, random_state=0)
    test = make_synthetic_mgsv(sizes[2], sizes[2], world=world, random_state=1, split="test")
    tic = time.perf_counter()
    model = MGSVGrounder(features=train.features, max_epochs=epochs, n_threads=threads,
                         random_state=0).fit(train.frame)
    fit_seconds = time.perf_counter() - tic
    tracks = list(dict.fromkeys(test.frame["music_id"]))
    truth = np.array([tracks.index(m) for m in test.frame["music_id"]])
    plain = model.decision_function(test.frame, features=test.features, music_ids=tracks,
                                    moment_weight=0)
    bank_frame = train.frame.sample(n=min(bank_size, len(train.frame)), random_state=0)
    features = ({v: train.features.video(v) for v in bank_frame["video_id"]},
                {m: test.features.music(m) for m in tracks})
    tic = time.perf_counter()
    bank = model.decision_function(bank_frame, features=features, music_ids=tracks,
                                   moment_weight=0)
    bank_seconds = time.perf_counter() - tic
    rows = {"plain": retrieval(plain, truth)}
    for beta in betas:
        rows[f"query bank, beta {beta:g}"] = retrieval(corrected(plain, bank, beta), truth)
    tic = time.perf_counter()
    fusion = {split: fusion_grid(model, data) for split, data in (
        ("test", test),  # a second unseen split, as fit's validation would be:
        ("validation", make_synthetic_mgsv(sizes[2] // 3, sizes[2] // 3, world=world,
                                           random_state=2, split="test")))}
    val = fusion["validation"]
    depth, weight = max(((d, w) for d in val for w in val[d]), key=lambda dw: val[dw[0]][dw[1]])
    out = {"fit_seconds": fit_seconds, "epochs": epochs, "bank_videos": len(bank_frame),
           "bank_seconds": bank_seconds, "rows": rows, "fusion_R@1": fusion,
           "fusion_chosen_on_validation": {"depth": depth, "weight": weight,
                                           "test_R@1": fusion["test"][depth][weight],
                                           "test_R@1_defaults": fusion["test"]["depth 10"]["0.05"]},
           "fusion_seconds": time.perf_counter() - tic}
    print(world, json.dumps(out), flush=True)
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = ["# What limits retrieval on unseen tracks: hubness (the query-bank correction) "
             "and the fusion with the moment score\n", f"Setup: {json.dumps(results['setup'])}\n"]
    for world, res in results["worlds"].items():
        lines += [f"## {world} (fit {res['fit_seconds']:.0f} s, {res['epochs']} epochs; bank of "
                  f"{res['bank_videos']} training videos scored in {res['bank_seconds']:.0f} s)"
                  "\n", "| scores | R@1 | R@10 | MRR | most top-1 answers to one track | "
                  "tracks never top-1 |", "|---|---|---|---|---|---|"]
        for label, r in res["rows"].items():
            lines.append(f"| {label} | {r['R@1']:.3f} | {r['R@10']:.3f} | {r['MRR']:.3f} | "
                         f"{r['most_top1']} | {r['never_top1']:.3f} |")
        lines += ["", "R@1 of the re-ranking rule by moment_weight (columns) and "
                  "rerank_depth (rows), on the test split and on a validation split of "
                  "other unseen tracks; the defaults are 0.05 and 10:", "",
                  "| split, depth | " + " | ".join(f"w={w:g}" for w in WEIGHTS) + " |",
                  "|---|" + "---|" * len(WEIGHTS)]
        for split, grid in res["fusion_R@1"].items():
            for depth, row in grid.items():
                lines.append(f"| {split}, {depth} | " + " | ".join(
                    f"{row[f'{w:g}']:.3f}" for w in WEIGHTS) + " |")
        chosen = res["fusion_chosen_on_validation"]
        lines += ["", f"Chosen on validation: {chosen['depth']}, w={chosen['weight']}: test "
                  f"R@1 {chosen['test_R@1']:.3f} (defaults {chosen['test_R@1_defaults']:.3f}).",
                  ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", default="crowded,noisy")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--bank", type=int, default=2000)
    parser.add_argument("--betas", default="5,10,20,40")
    parser.add_argument("--n-threads", type=int, default=2)
    parser.add_argument("--sizes", default="6000,600,2000",
                        help="training videos, training tracks, test videos (= tracks)")
    args = parser.parse_args()
    torch.set_num_threads(args.n_threads)
    betas = [float(b) for b in args.betas.split(",") if b]
    sizes = tuple(int(x) for x in args.sizes.split(","))
    results: dict[str, Any] = {"setup": {"train": f"{sizes[0]} videos / {sizes[1]} tracks",
                                         "test": f"{sizes[2]} videos / {sizes[2]} unseen "
                                                 "tracks",
                                         "threads": args.n_threads, "betas": betas},
                               "worlds": {}}
    for world in [w for w in args.worlds.split(",") if w]:
        results["worlds"][world] = run_world(world, args.epochs, args.bank, betas,
                                             args.n_threads, sizes)  # type: ignore[arg-type]
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{NAME}.json").write_text(json.dumps(results, indent=2) + "\n")
        (RESULTS / f"{NAME}.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
