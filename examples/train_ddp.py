"""Data-parallel training with torchrun: each process trains on its share of every epoch.

    torchrun --standalone --nproc_per_node 2 examples/train_ddp.py --out ddp_run

Every process builds the same synthetic data and calls ``fit`` with the same frame; ``fit``
sees the initialised process group and trains data-parallel (DistributedDataParallel,
gloo on CPUs, nccl on GPUs with ``--device cuda``). Rank 0 saves the model to
``OUT/model``; every rank writes ``OUT/rank{R}.json`` with a checksum of its weights, its
test metrics and its test predictions, which agree across ranks. Without torchrun the
script trains in one process. Several machines: run the same command on each with
``--nnodes N --node_rank I --rdzv_endpoint HOST:PORT`` instead of ``--standalone``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from pathlib import Path

import torch
import torch.distributed as dist

from mgsv_sk import MGSVGrounder, evaluate, make_synthetic_mgsv
from mgsv_sk.train.distributed import init_from_env


def weights_sha256(model: MGSVGrounder) -> str:
    """sha256 over the fitted network's tensors (names and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.model_.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for the model and rank reports")
    parser.add_argument("--videos", type=int, default=1200)
    parser.add_argument("--tracks", type=int, default=120)
    parser.add_argument("--test-videos", type=int, default=200)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32, help="per process")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    args = parser.parse_args(argv)

    cuda = args.device.startswith("cuda") or (args.device == "auto"
                                              and torch.cuda.is_available())
    ctx = init_from_env("nccl" if cuda else "gloo")  # None when not launched by torchrun
    rank = 0 if ctx is None else ctx.rank
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank {rank}] %(message)s")

    # The same data on every rank: fit shards each epoch's batches between the processes.
    train = make_synthetic_mgsv(args.videos, args.tracks, random_state=0)
    test = make_synthetic_mgsv(args.test_videos, args.test_videos, random_state=1, split="test")
    model = MGSVGrounder(
        features=train.features, d_model=args.d_model, n_heads=4, encoder_layers=1,
        decoder_layers=2, temporal_dropout=0.1, lr=1e-3, batch_size=args.batch_size,
        max_epochs=args.epochs, patience=3, device=args.device, random_state=0, n_threads=1,
    ).fit(train.frame)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        model.save(out / "model", overwrite=True)  # CPU weights, loadable anywhere
    pred = model.predict(test.frame, features=test.features)
    report = {
        "rank": rank,
        "world_size": 1 if ctx is None else ctx.world_size,
        "weights_sha256": weights_sha256(model),
        "n_epochs": model.n_epochs_,
        "best_epoch": model.best_epoch_,
        "train_total": [row["train_total"] for row in model.history_],
        "metrics": evaluate(model, test.frame, features=test.features),
        "start": pred["start"].tolist(),
        "end": pred["end"].tolist(),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(report, indent=1))
    if rank == 0:
        print(f"trained on {report['world_size']} process(es), {model.n_epochs_} epochs; "
              f"test mIoU {report['metrics']['mIoU']:.3f}, R@1 {report['metrics']['R@1']:.3f}; "
              f"model saved to {out / 'model'}")
    if ctx is not None:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
