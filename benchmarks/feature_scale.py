"""Accuracy when the features come at another scale or offset than the synthetic ones.

A user's extractor decides the scale of the features: CLIP ViT-B/32 image embeddings (not
L2-normalised) have a norm of about 10 and a mean direction every frame shares; AST
outputs, other encoders or pre-normalised features differ again. This fits the quick
configuration of ``examples/quickstart.py`` on the same synthetic split under per-dimension
affine maps of its features, x -> a * x + b (train and test alike), and reports the protocol
metrics of each, with the encoders' input standardisation (the default) and, with
``--identity``, without it (the encoders as they were before it existed).

    python benchmarks/feature_scale.py [--identity] [--maps plain,scaled,offset,clip_like]

Writes ``benchmarks/results/feature_scale[_identity].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
QUICK = dict(d_model=128, n_heads=4, temporal_dropout=0.1, lr=1e-3, batch_size=64,
             max_epochs=8, patience=3, random_state=0)
METRICS = ("R@1", "R@10", "mIoU", "MoR@1,0.5")


def maps() -> dict[str, tuple[tuple[Any, Any], tuple[Any, Any]]]:
    """(video (a, b), music (a, b)) per named map."""
    rng = np.random.default_rng(5)
    outliers_v = np.ones(512, np.float32)
    outliers_v[rng.choice(512, 8, replace=False)] = 10.0
    outliers_m = np.ones(768, np.float32)
    outliers_m[rng.choice(768, 8, replace=False)] = 10.0
    return {
        "plain": ((1.0, 0.0), (1.0, 0.0)),
        # 40x larger video features, 50x smaller music features, both shifted
        "scaled": ((40.0, 3.0), (0.02, -1.0)),
        # a mean every frame (snippet) shares, far larger than the spread
        "offset": ((1.0, 8.0), (1.0, -6.0)),
        # per-dimension offsets, a few dimensions 10x the others (as CLIP's are)
        "clip_like": ((0.5 * outliers_v, rng.normal(0, 2, 512).astype(np.float32)),
                      (2.0 * outliers_m, rng.normal(0, 3, 768).astype(np.float32))),
    }


def mapped(features: Any, frame: Any, video: tuple[Any, Any], music: tuple[Any, Any]) -> Any:
    from mgsv_sk.data.features import InMemoryFeatures

    return InMemoryFeatures(
        {v: features.video(v) * video[0] + video[1] for v in dict.fromkeys(frame["video_id"])},
        {m: features.music(m) * music[0] + music[1] for m in dict.fromkeys(frame["music_id"])})


def without_standardisation() -> None:
    """Every fit in this process standardises its input with mean 0 and scale 1 (the
    identity): the encoders as they were before the standardisation existed."""
    from mgsv_sk.train import fitting

    def identity(source: Any, ids: Any, kind: str, seed: int) -> Any:
        dim = source.video_dim if kind == "video" else source.music_dim
        return np.zeros(dim, np.float32), np.ones(dim, np.float32)

    fitting.feature_moments = identity  # type: ignore[assignment]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--identity", action="store_true",
                        help="fit without the input standardisation (the encoders before it)")
    parser.add_argument("--maps", default="plain,scaled,offset,clip_like")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from mgsv_sk import MGSVGrounder, evaluate, make_synthetic_mgsv

    if args.identity:
        without_standardisation()
    train = make_synthetic_mgsv(2000, 200, random_state=0)
    test = make_synthetic_mgsv(300, 300, random_state=1, split="test")
    chosen = {k: v for k, v in maps().items() if k in args.maps.split(",")}
    report: dict[str, Any] = {"config": QUICK, "standardised": not args.identity, "maps": {}}
    for name, (video, music) in chosen.items():
        began = time.perf_counter()
        fit_features = mapped(train.features, train.frame, video, music)
        model = MGSVGrounder(features=fit_features, **QUICK).fit(train.frame)
        got = evaluate(model, test.frame, features=mapped(test.features, test.frame, video, music))
        report["maps"][name] = {m: round(float(got[m]), 3) for m in METRICS}
        report["maps"][name]["seconds"] = round(time.perf_counter() - began, 1)
        print(name, json.dumps(report["maps"][name]), flush=True)
    tag = "_identity" if args.identity else ""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"feature_scale{tag}.json").write_text(json.dumps(report, indent=1))
    lines = [f"# Feature scale: quick configuration, aligned world "
             f"({'standardised input' if not args.identity else 'no standardisation'})", "",
             "| features | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    lines += [f"| {name} | " + " | ".join(f"{row[m]:.3f}" for m in METRICS) + " |"
              for name, row in report["maps"].items()]
    (RESULTS / f"feature_scale{tag}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
