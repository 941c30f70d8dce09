"""Quickstart: synthetic MGSV-EC data in the release layout -> packed store -> fit -> predict.

Runs offline in about a minute on 2 CPU cores:

    python examples/quickstart.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from mgsv_sk import (
    RidgeGrounder,
    TrivialGrounder,
    evaluate,
    make_synthetic_mgsv,
    pack_features,
    read_annotations,
)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="mgsv_quickstart_"))
    # 1. Synthetic data written exactly as the MGSV-EC release is laid out.
    train = make_synthetic_mgsv(1500, 150, random_state=0, split="train", path=work / "release")
    test = make_synthetic_mgsv(300, 300, random_state=1, split="test", path=work / "release")
    train_df = read_annotations(train.csv_path)
    test_df = read_annotations(test.csv_path)
    print(f"wrote {len(train_df)} train / {len(test_df)} test videos under {work / 'release'}")

    # 2. Pack the .pt tree once; training and prediction read the packed store.
    both = [*train_df["video_id"], *test_df["video_id"]]
    tracks = [*train_df["music_id"].unique(), *test_df["music_id"].unique()]
    store = pack_features(work / "release", work / "packed", video_ids=both, music_ids=tracks)

    # 3. Fit, then predict: SmG (music_id given) and MsG (retrieve, then ground).
    model = RidgeGrounder(features=store).fit(train_df)
    model.set_catalogue(test_df["music_id"].unique())  # serve the test tracks
    smg = model.predict(test_df)
    msg = model.predict(test_df.drop(columns="music_id"))
    print("\nSmG predictions (moment on the known track):")
    print(smg.head(3).round(2).to_string())
    print("\nMsG predictions (best catalogue track, moment on it):")
    print(msg.head(3).round(2).to_string())

    # 4. The protocol's metrics next to the trivial [0, video duration] predictor.
    rows = {
        "trivial [0, duration]": evaluate(TrivialGrounder().fit(train_df), test_df, features=store),
        "ridge baseline": evaluate(model, test_df),
    }
    keys = ["mIoU", "IoU@0.5", "IoU@0.7", "R@1", "R@10", "MedianR", "MoR@1,0.5", "MoR@10,0.5"]
    print(f"\n{'model':24s}" + "".join(f"{k:>11s}" for k in keys))
    for name, report in rows.items():
        print(f"{name:24s}" + "".join(f"{report[k]:11.3f}" for k in keys))


if __name__ == "__main__":
    main()
