"""Probe: MaDe training-step throughput on CPU (fp32 and bf16 autocast) and peak RSS.

Default config, batch 128, 2 threads, videos padded to F=30 (valid 16..30, mean ~23) and
tracks padded to S=70 (valid 42..70, mean ~56); tracks drawn from a 3,496-track pool so a
few videos share a track. One step = forward + losses + backward + grad clip + Adam.

    python benchmarks/_nn_step_probe.py [--steps 6] [--n-threads 2] [--profile]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from contextlib import nullcontext

import torch

from mgsv_sk import MGSVGrounder
from mgsv_sk.nn import MaDe, count_parameters, made_losses

DEFAULTS = MGSVGrounder()  # the estimator's defaults: the network and loss weights


def make_batch(gen: torch.Generator, b: int = 128, f: int = 30, s: int = 70) -> dict:
    tracks = torch.randint(0, 3496, (b,), generator=gen)
    unique, music_index = torch.unique(tracks, return_inverse=True)
    u = unique.numel()
    f_len = torch.randint(16, f + 1, (b,), generator=gen)
    s_len = torch.randint(42, s + 1, (u,), generator=gen)
    return {
        "video": torch.randn(b, f, 512, generator=gen),
        "video_mask": torch.arange(f)[None] < f_len[:, None],
        "music": torch.randn(u, s, 768, generator=gen),
        "music_mask": torch.arange(s)[None] < s_len[:, None],
        "music_index": music_index,
        "target_cw": torch.rand(b, 2, generator=gen) * 0.3 + 0.1,
    }


def step(model: MaDe, opt: torch.optim.Optimizer, batch: dict, bf16: bool) -> float:
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    with ctx:
        out = model(batch["video"], batch["video_mask"], batch["music"], batch["music_mask"],
                    batch["music_index"])
    terms = made_losses(out, batch["music_index"], batch["target_cw"], DEFAULTS._loss_weights())
    opt.zero_grad(set_to_none=True)
    terms.total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return float(terms.total.detach())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--n-threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--modes", default="fp32,bf16")
    args = parser.parse_args()
    torch.set_num_threads(args.n_threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    batches = [make_batch(gen, args.batch) for _ in range(3)]
    model = MaDe(DEFAULTS._model_config(512, 768)).train()
    print(f"trainable parameters: {count_parameters(model):,}")
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    for mode in args.modes.split(","):
        bf16 = mode == "bf16"
        for i in range(2):  # warm-up
            step(model, opt, batches[i % 3], bf16)
        times, cpu = [], 0.0
        for i in range(args.steps):
            t0, c0 = time.perf_counter(), time.process_time()
            loss = step(model, opt, batches[i % 3], bf16)
            times.append(time.perf_counter() - t0)
            cpu += time.process_time() - c0
        dt = statistics.median(times)
        # cpu/wall well below the thread count means another process competed for the cores.
        print(f"{mode}: median {dt * 1e3:.0f} ms/step (min {min(times) * 1e3:.0f}), "
              f"{args.batch / dt:.1f} samples/s, cpu/wall {cpu / sum(times):.2f}, "
              f"loss {loss:.3f}")
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step(model, opt, batches[0], bf16)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
