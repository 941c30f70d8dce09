"""Scale out with Dask: a grid search on a cluster, batch prediction over a Dask DataFrame
with the exported ONNX model, and a catalogue whose search runs on the workers' shards.

A LocalCluster of 2 worker processes (1 thread each) stands in for a real cluster; with one,
pass its address to ``Client("tcp://scheduler:8786")`` and put the packed stores and the
bundle on storage every worker reads. Runs offline in about a minute on 2 CPU cores:

    pip install "mgsv-sk[dask]"
    python examples/dask_scale_out.py
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import dask.dataframe as dd
import numpy as np
import pandas as pd
from distributed import Client, LocalCluster
from sklearn.model_selection import GridSearchCV, GroupKFold

from mgsv_sk import (
    MGSVGrounder,
    grounding_report,
    make_synthetic_mgsv,
    pack_features,
    protocol_scorer,
)
from mgsv_sk.export.dask import predict_dask
from mgsv_sk.export.runtime import OnnxGrounder
from mgsv_sk.export.to_onnx import export_onnx
from mgsv_sk.train.dask_search import grid_search_on_dask

NUMERIC = ["start", "end", "score", "moment_score"]


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="mgsv_dask_"))
    train = make_synthetic_mgsv(450, 45, random_state=0)
    test = make_synthetic_mgsv(200, 200, random_state=1, split="test")
    # Packed stores travel to the workers as their path (in-memory features would be
    # pickled into every fit task).
    train_store = pack_features(train.features, work / "train_packed", annotations=train.frame)
    test_store = pack_features(test.features, work / "test_packed", annotations=test.frame)

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        # 1. Grid search: the 2 x 3 (candidate, fold) fits run on the workers; the refit of
        #    the best candidate runs here.
        tic = time.perf_counter()
        base = MGSVGrounder(features=str(train_store.path), d_model=32, n_heads=4,
                            encoder_layers=1, decoder_layers=2, temporal_dropout=0.1,
                            batch_size=64, max_epochs=3, validation_fraction=0.0,
                            random_state=0)
        search = GridSearchCV(base, {"lr": [3e-4, 1e-3]},
                              scoring=protocol_scorer(["miou", "r1", "mor1@0.5"]),
                              refit="miou", cv=GroupKFold(n_splits=3))
        grid_search_on_dask(search, train.frame, client=client,
                            groups=train.frame["music_id"])
        cols = ["param_lr", "mean_test_miou", "mean_test_r1", "mean_test_mor1@0.5",
                "rank_test_miou"]
        print(f"grid search on {len(client.nthreads())} Dask workers "
              f"({time.perf_counter() - tic:.0f} s):")
        table = pd.DataFrame(search.cv_results_)[cols]
        print(table.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
        print(f"best: {search.best_params_} (mIoU {search.best_score_:.3f})")

        # 2. Export the best model, serving the 200 test tracks as its catalogue.
        best = search.best_estimator_
        best.set_catalogue(test.frame["music_id"].unique(), features=test_store)
        bundle = export_onnx(best, work / "bundle")
        print(f"\nexported to {bundle}")

        # 3. Batch prediction over a Dask DataFrame: each worker loads the bundle once and
        #    predicts its partitions with onnxruntime (no torch needed on a serving cluster).
        ddf = dd.from_pandas(test.frame, npartitions=4)
        tic = time.perf_counter()
        smg = predict_dask(ddf, bundle, test_store.path, mode="smg").compute()
        msg = predict_dask(ddf, bundle, test_store.path, mode="msg").compute()
        top = predict_dask(ddf, bundle, test_store.path, mode="rank", k=3).compute()
        print(f"predicted {len(ddf)} videos x 3 modes over {ddf.npartitions} partitions in "
              f"{time.perf_counter() - tic:.1f} s")
        print("\nMsG predictions (first rows):")
        print(msg.head().round(2).to_string())
        print("\ntop-3 tracks of the first video:")
        print(top.loc[top.index[0]].round(2).to_string())

        # 4. A catalogue too large for one machine's search: its embeddings and X-Pool
        #    states go to the workers in shards; rank / predict retrieve there and ground
        #    the retrieved tracks here, with the same answers as the unsharded grounder.
        served = OnnxGrounder.load(bundle, 1, features=test_store.path)
        alone = served.rank(test.frame.drop(columns="music_id"), 3)
        shards = served.shard_catalogue(client)
        served.set_catalogue(shards)
        on_shards = served.rank(test.frame.drop(columns="music_id"), 3)
        same_top = (on_shards["music_id"].to_numpy() == alone["music_id"].to_numpy()).mean()
        print(f"\n{shards}: the same top-3 tracks as one process for {same_top:.0%} of "
              "the rows")

    # 5. The same answers as the runtime on the whole frame, and the protocol's metrics.
    local = OnnxGrounder.load(bundle, 1, features=test_store.path)
    whole = local.predict(test.frame.drop(columns="music_id"))
    diff = np.abs(msg[NUMERIC].to_numpy() - whole[NUMERIC].to_numpy()).max()
    same = (msg["music_id"] == whole["music_id"]).mean()
    print(f"\nDask vs one process: same track for {same:.0%} of the videos, "
          f"max |difference| {diff:.1e}")
    truth = test.frame
    report = grounding_report(smg[["start", "end"]], truth[["music_start", "music_end"]],
                              truth["music_total_duration"])
    r1 = (msg["music_id"] == truth["music_id"]).mean()
    print(f"SmG mIoU {report['mIoU']:.3f}, IoU@0.5 {report['IoU@0.5']:.3f}; "
          f"MsG R@1 over {truth['music_id'].nunique()} tracks {r1:.3f}")


if __name__ == "__main__":
    main()
