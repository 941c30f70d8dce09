"""Reading one epoch from a packed store vs from the MGSV-EC ``.pt`` tree.

Writes a synthetic release tree (default 2,000 videos / 500 tracks), packs it, then reads
one training epoch (every video with its track, in a shuffled order) both ways, and
reports the speed-up. Results go to ``benchmarks/results/pack_speed.json``.

    python benchmarks/pack_speed.py [--videos 2000] [--tracks 500]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from mgsv_sk import FeatureTree, make_synthetic_mgsv, pack_features

RESULTS = Path(__file__).parent / "results" / "pack_speed.json"


def read_epoch(source, video_ids, music_ids, order) -> float:
    """Read every (video, track) sample once in ``order``; return the seconds it took."""
    start = time.perf_counter()
    checksum = 0.0
    for i in order:
        checksum += float(source.video(video_ids[i])[0, 0]) + float(
            source.music(music_ids[i])[0, 0]
        )
    elapsed = time.perf_counter() - start
    assert np.isfinite(checksum)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=2000)
    parser.add_argument("--tracks", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = make_synthetic_mgsv(
            args.videos, args.tracks, random_state=0, path=Path(tmp) / "release"
        )
        tree = FeatureTree(data.root)
        t0 = time.perf_counter()
        packed = pack_features(tree, Path(tmp) / "packed", annotations=data.frame)
        pack_s = time.perf_counter() - t0
        vids = data.frame["video_id"].tolist()
        mids = data.frame["music_id"].tolist()
        order = np.random.default_rng(0).permutation(len(vids))
        read_epoch(packed, vids, mids, order[:50])  # warm the page cache for both
        tree_s = read_epoch(tree, vids, mids, order)
        packed_s = read_epoch(packed, vids, mids, order)
    result = {
        "videos": args.videos,
        "tracks": args.tracks,
        "pack_seconds": round(pack_s, 3),
        "epoch_seconds_pt_tree": round(tree_s, 4),
        "epoch_seconds_packed": round(packed_s, 4),
        "samples_per_s_pt_tree": round(args.videos / tree_s, 1),
        "samples_per_s_packed": round(args.videos / packed_s, 1),
        "speedup": round(tree_s / packed_s, 1),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"one epoch from the .pt tree: {tree_s:.3f} s ({result['samples_per_s_pt_tree']} samples/s)"
    )
    print(
        f"one epoch from the packed store: {packed_s:.4f} s "
        f"({result['samples_per_s_packed']} samples/s)"
    )
    print(
        f"packing took {pack_s:.2f} s; speed-up of an epoch: {result['speedup']}x (target >= 20x)"
    )
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
