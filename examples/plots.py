"""Pictures of a fitted model: a track timeline, training curves and recall@k curves.

Fits a small MGSVGrounder on synthetic data (about a minute on 2 CPU cores) and writes
docs/images/timeline.png, training_curves.png and recall_at_k.png (or into the folder
given as the first argument). Needs matplotlib: pip install "mgsv-sk[plot]".

    python examples/plots.py [OUT_DIR]
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mgsv_sk import (  # noqa: E402
    MGSVGrounder,
    RidgeGrounder,
    make_synthetic_mgsv,
    retrieval_ranks,
    temporal_iou,
)
from mgsv_sk.plot import (  # noqa: E402
    plot_recall_at_k,
    plot_timeline,
    plot_training_curves,
)

# Small enough to train in about a minute on 2 CPU cores; patience = max_epochs so the
# curves show every epoch (the best epoch's weights are kept all the same). A fifth of the
# tracks is held out and the best epoch chosen on MoR@1,0.5 (right track AND right moment):
# with ~10 validation tracks, the default MoR@10 would count every track as retrieved.
QUICK = dict(d_model=64, n_heads=4, encoder_layers=1, decoder_layers=2,
             temporal_dropout=0.1, lr=1e-3, batch_size=64, max_epochs=6, patience=6,
             validation_fraction=0.2, early_stopping_metric="mor1@0.5")


def main(out: Path) -> None:
    logging.basicConfig(level=logging.WARNING)
    out.mkdir(parents=True, exist_ok=True)
    train = make_synthetic_mgsv(1000, 100, random_state=0)
    test = make_synthetic_mgsv(300, 300, random_state=1, split="test")
    model = MGSVGrounder(features=train.features, random_state=0, **QUICK).fit(train.frame)
    ridge = RidgeGrounder(features=train.features).fit(train.frame)
    test_df = test.frame

    # 1. Training curves: loss terms and validation metrics per epoch, best epoch marked.
    loss_ax, _ = plot_training_curves(model)
    loss_ax.figure.savefig(out / "training_curves.png", dpi=110)

    # 2. Timeline of one test video on its own track: the row of median IoU (typical, not
    #    the best), with the detector's per-snippet evidence.
    pred = model.predict(test_df, features=test.features)
    ious = temporal_iou(pred[["start", "end"]].to_numpy(),
                        test_df[["music_start", "music_end"]].to_numpy(),
                        test_df["music_total_duration"].to_numpy())
    row = int(np.argsort(ious)[len(ious) // 2])
    one = test_df.iloc[[row]]
    evidence = model.snippet_evidence(one, features=test.features)[0]
    ax = plot_timeline(float(one["music_total_duration"].iloc[0]),
                       one[["music_start", "music_end"]].to_numpy()[0],
                       pred[["start", "end"]].to_numpy()[row], evidence)
    ax.set_title(f"Test video of median IoU: {ax.get_title()}")
    ax.figure.savefig(out / "timeline.png", dpi=110)

    # 3. Recall@k over the 300 test tracks: MaDe next to the ridge baseline.
    gallery = list(test_df["music_id"].unique())
    truth = test_df["music_id"].to_numpy(dtype=object)
    ranks = {
        name: retrieval_ranks(est.decision_function(test_df, features=test.features,
                                                    music_ids=gallery),
                              np.asarray(gallery, dtype=object), truth)
        for name, est in (("MGSVGrounder (quick)", model), ("ridge baseline", ridge))
    }
    ax = plot_recall_at_k(ranks, gallery_size=len(gallery))
    ax.figure.savefig(out / "recall_at_k.png", dpi=110)
    plt.close("all")
    print(f"mIoU {ious.mean():.3f} over {len(ious)} test videos; wrote "
          f"{', '.join(p.name for p in sorted(out.glob('*.png')))} to {out}")


if __name__ == "__main__":
    default = Path(__file__).resolve().parents[1] / "docs" / "images"
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
