"""Export and serve: fit -> save -> ONNX bundle -> serve with onnxruntime (no torch needed).

Runs offline in about a minute on 2 CPU cores:

    python examples/export_and_serve.py

The same export from the command line: ``python -m mgsv_sk.export SAVED_MODEL_DIR OUT_DIR
[--quantize]``. The server side needs numpy, pandas and onnxruntime only:

    from mgsv_sk.export.runtime import OnnxGrounder
    grounder = OnnxGrounder.load("bundle/", n_threads=2)
    grounder.predict(frame, features="packed/")     # a packed store (mgsv_sk.pack_features)
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from mgsv_sk import MGSVGrounder, evaluate, make_synthetic_mgsv, pack_features
from mgsv_sk.export.runtime import OnnxGrounder
from mgsv_sk.export.to_onnx import export_onnx

# A smaller network than the paper's default, so that this example fits in well under a
# minute (the benchmark, benchmarks/inference.py, uses the default d 256). One torch thread:
# on a 2-core machine shared with other work, a 2-thread pool mostly waits for its threads.
QUICK = dict(d_model=128, n_heads=4, encoder_layers=1, decoder_layers=2,
             temporal_dropout=0.1, lr=1e-3, batch_size=64, max_epochs=6, patience=3,
             n_threads=1)
NUMERIC = ["start", "end", "score", "moment_score"]


def max_diff(a, b) -> str:
    return ", ".join(f"{c} {np.abs(a[c].to_numpy() - b[c].to_numpy()).max():.1e}"
                     for c in NUMERIC)


def median_ms(fn, reps: int = 20) -> float:
    fn()
    times = []
    for _ in range(reps):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return 1e3 * float(np.median(times))


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="mgsv_export_"))
    train = make_synthetic_mgsv(1500, 150, random_state=0)
    test = make_synthetic_mgsv(300, 300, random_state=1, split="test")

    # 1. Fit, and serve the 300 test tracks as the catalogue.
    tic = time.perf_counter()
    model = MGSVGrounder(features=train.features, random_state=0, **QUICK).fit(train.frame)
    model.set_catalogue(test.frame["music_id"].unique(), features=test.features)
    print(f"fitted {model.n_epochs_} epochs in {time.perf_counter() - tic:.0f} s; catalogue "
          f"of {len(model.catalogue_ids_)} tracks")

    # 2. Save (JSON + .npz) and export the saved model: fp32 and int8 graphs + catalogue.
    model.save(work / "model")
    bundle = export_onnx(MGSVGrounder.load(work / "model"), work / "bundle", quantize=True)
    files = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    print(f"bundle {bundle}:\n  " + "\n  ".join(files))

    # 3. Serve from a packed store, as a server without torch would.
    store = pack_features(test.features, work / "packed", annotations=test.frame)
    fp32 = OnnxGrounder.load(bundle, n_threads=2, features=store.path,
                             precision="fp32")
    int8 = OnnxGrounder.load(bundle, n_threads=2, features=store.path)

    # 4. Parity with the torch estimator on the 300 test videos.
    smg_x, msg_x = test.frame, test.frame.drop(columns="music_id")
    smg_t, smg_o = model.predict(smg_x, features=test.features), fp32.predict(smg_x)
    msg_t, msg_o = model.predict(msg_x, features=test.features), fp32.predict(msg_x)
    rank_t = model.rank(msg_x, k=5, features=test.features)
    rank_o = fp32.rank(msg_x, k=5)
    print("\nparity, ORT fp32 vs torch (max |difference|; seconds for start/end):")
    print(f"  SmG: {max_diff(smg_t, smg_o)}")
    print(f"  MsG: {max_diff(msg_t, msg_o)}; same retrieved track for "
          f"{(msg_t.music_id == msg_o.music_id).mean():.1%} of the videos")
    print(f"  rank k=5: identical track lists for "
          f"{(rank_t.music_id.to_numpy() == rank_o.music_id.to_numpy()).mean():.1%} of rows")

    # 5. Accuracy of each backend on the protocol (gallery: the 300 test tracks).
    keys = ["mIoU", "IoU@0.5", "R@1", "R@10", "MoR@1,0.5"]
    print(f"\n{'backend':14s}" + "".join(f"{k:>11s}" for k in keys))
    for name, grounder in [("torch", model), ("ORT fp32", fp32), ("ORT int8", int8)]:
        report = evaluate(grounder, test.frame, features=test.features)
        print(f"{name:14s}" + "".join(f"{report[k]:11.3f}" for k in keys))

    # 6. Latency of one MsG query (retrieve among 300 tracks + ground the top-1).
    one = msg_x.iloc[:1]
    print("\nmedian latency of one MsG query (torch: 1 thread, ORT: 2 threads): "
          f"torch {median_ms(lambda: model.predict(one, features=test.features)):.1f} ms, "
          f"ORT fp32 {median_ms(lambda: fp32.predict(one)):.1f} ms, "
          f"ORT int8 {median_ms(lambda: int8.predict(one)):.1f} ms")


if __name__ == "__main__":
    main()
