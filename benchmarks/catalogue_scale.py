"""Catalogues of 100,000 to millions of tracks: ANN first stage + int8 snippet states.

One model (the default architecture, d_model 256, trained briefly on synthetic data: the
latency does not depend on training) is exported once; its 2,000 encoded test tracks are
the *base* of every synthetic catalogue, built without encoding anything at that size:

- dual embeddings: track t is base track t mod 2,000 plus Gaussian noise shaped like the
  base embeddings' own covariance (``--noise`` of their spread), renormalised: clusters
  with the model's anisotropy, not isotropic noise;
- snippet tokens and X-Pool states: the base track's real encoder outputs, stored int8
  with per-row scales (``export.compact_bundle``), written tiled (about 30 GB at 1M tracks);
- the first-stage index: each kind of ``--index`` in turn on the same catalogue (default
  ``auto``: IVF above 50,000 tracks, 4 sqrt(N) cells; ``hnsw``: M 32, efConstruction 64),
  its search parameter (HNSW efSearch, IVF nprobe) tuned per size to the least of a grid
  with recall@100 >= 0.99 on held-out queries (other test videos than the measured ones).

Each size and index is served in a fresh torch-free process (``export.runtime.
OnnxGrounder``, 2 threads, ``xpool_top_k`` = 100): per-query MsG latency (encode the video,
ANN top-100, X-Pool re-rank of the 100 from int8 states read with pread, ground the best
track) with the time of each stage, resident memory (VmRSS), and the ANN stage's recall@10
/ @100 against an exact scan of the embeddings for the same queries (the model's video
embeddings of test videos). The catalogue's files are dropped from the page cache before
each process starts, so the first pass over the queries reads the candidates' rows from
disk (cold); the second pass repeats the same queries with those rows cached (warm). The
100k catalogue is also served with the exact scan for reference.

    OMP_NUM_THREADS=2 python benchmarks/catalogue_scale.py --index hnsw ivf   # 100k and 1M
    OMP_NUM_THREADS=2 python benchmarks/catalogue_scale.py --sizes 100000 1000000 3000000
    python benchmarks/catalogue_scale.py --quick                  # 20k, HNSW and IVF, smoke

Writes ``benchmarks/results/catalogue_scale.json`` and ``.md`` (``--quick``: ``*_quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
THREADS = 2
TOP_K = 100


def memory_mb() -> dict[str, float]:
    """VmRSS, RssAnon, RssFile of this process in MB (Linux)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def recall(got: np.ndarray, exact: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(got, exact)]))


def exact_top(emb: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact dual top-k rows of the queries, scanning a (memory-mapped) emb in blocks."""
    from mgsv_sk.search import top_k_rows

    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_r = np.zeros((len(queries), 0), np.int64)
    for lo in range(0, len(emb), 200_000):
        block = np.asarray(emb[lo: lo + 200_000])
        s = (block @ queries.T).T
        best_s, best_r = top_k_rows(np.concatenate([best_s, s], axis=1),
                                    np.concatenate([best_r, np.broadcast_to(
                                        np.arange(lo, lo + len(block)), s.shape)], axis=1), k)
    return best_r


# -- serving one catalogue: a fresh torch-free process ---------------------------------------
def serve_worker(config_path: str) -> None:
    import pandas as pd

    from export.runtime import OnnxGrounder

    cfg = json.loads(Path(config_path).read_text())
    frame = pd.read_json(cfg["queries"], orient="split", dtype={"video_id": str})
    rows = [frame.iloc[[i]] for i in range(len(frame))]
    out: dict[str, Any] = {"memory_mb": {"before_load": memory_mb()}}
    tic = time.perf_counter()
    g = OnnxGrounder.load(cfg["bundle"], THREADS, features=cfg["packed"], precision="fp32",
                          verify=False)
    out["load_s"] = round(time.perf_counter() - tic, 2)
    out["memory_mb"]["after_load"] = memory_mb()
    g.xpool_top_k = TOP_K
    if cfg.get("exact_first_stage"):
        g._catalogue.ann = None  # today's first stage: the exact dual scan
    elif g._catalogue.ann is not None and cfg.get("search"):
        from dataclasses import replace

        ann = g._catalogue.ann
        ann.params = replace(ann.params, **cfg["search"])
    stages = time_stages(g)
    for r in rows[:3]:  # warm-up (the graphs; other tracks' states than the measured ones)
        g.predict(r)

    def measure() -> dict[str, Any]:
        for v in stages.values():
            v.clear()
        times = []
        for r in rows:
            tic = time.perf_counter()
            g.predict(r)
            times.append(time.perf_counter() - tic)
        ms = 1e3 * np.array(times)
        return {"p50": round(float(np.percentile(ms, 50)), 2),
                "p95": round(float(np.percentile(ms, 95)), 2),
                "mean": round(float(ms.mean()), 2), "queries": len(ms),
                "stage_ms_per_query": {k: round(1e3 * sum(v) / len(rows), 2)
                                       for k, v in stages.items()}}

    # first pass: the catalogue's files were dropped from the page cache (cold disk reads);
    # second pass: the same queries again, their candidates' rows now cached
    out["latency_ms"] = measure()
    out["memory_mb"]["after_queries"] = memory_mb()
    out["latency_ms_warm"] = measure()
    if not cfg.get("exact_first_stage"):  # the ANN stage's recall for these queries
        source = g._source(None)
        emb = g._encode_videos(frame, source).emb
        tic = time.perf_counter()
        _, got = g._catalogue.first_stage(emb, TOP_K)
        out["first_stage_ms"] = round(1e3 * (time.perf_counter() - tic) / len(emb), 3)
        np.save(cfg["video_emb"], emb)
        np.save(cfg["ann_rows"], got)
    Path(cfg["out"]).write_text(json.dumps(out))


def time_stages(g: Any) -> dict[str, list[float]]:
    """Wrap the stages of one query on this grounder instance to record their seconds."""
    cat = g._catalogue
    stages: dict[str, list[float]] = {}

    def wrap(owner: Any, name: str, label: str) -> None:
        inner = getattr(owner, name)
        stages[label] = []

        def timed(*a: Any, **kw: Any) -> Any:
            tic = time.perf_counter()
            try:
                return inner(*a, **kw)
            finally:
                stages[label].append(time.perf_counter() - tic)
        setattr(owner, name, timed)

    wrap(g, "_encode_videos", "encode video")
    wrap(cat, "first_stage", "first stage")
    wrap(cat, "padded_states", "read candidates' states")
    wrap(cat, "emb", "read candidates' embeddings")
    wrap(cat, "padded_tokens", "read the best track's tokens")
    wrap(g, "_scores", "retrieval (first stage + re-rank)")
    wrap(g, "_ground", "ground")
    return stages


def drop_from_page_cache(folder: Path) -> None:
    """Ask the kernel to forget the cached pages of every file under ``folder`` (clean pages
    only, hence the sync first), so the next pass reads from disk."""
    os.sync()
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def serve(work: Path, bundle: Path, packed: Path, queries: Path, tag: str,
          **extra: Any) -> dict[str, Any]:
    cfg = {"bundle": str(bundle), "packed": str(packed), "queries": str(queries),
           "out": str(work / f"{tag}.json"), "video_emb": str(work / f"{tag}_emb.npy"),
           "ann_rows": str(work / f"{tag}_rows.npy"), **extra}
    path = work / f"{tag}_cfg.json"
    path.write_text(json.dumps(cfg))
    drop_from_page_cache(bundle)
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "OPENBLAS_NUM_THREADS": str(THREADS),
           "MKL_NUM_THREADS": str(THREADS)}
    subprocess.run([sys.executable, __file__, "--serve-worker", str(path)], check=True, env=env)
    out: dict[str, Any] = json.loads(Path(cfg["out"]).read_text())
    if Path(cfg["ann_rows"]).exists():
        out["_emb"] = np.load(cfg["video_emb"])
        out["_rows"] = np.load(cfg["ann_rows"])
    return out


# -- synthetic catalogues ----------------------------------------------------------------------
def _tile_file(dst: Path, src: Path, rows_per_rep: int, total_rows: int) -> None:
    """``dst``: the ``.npy`` at ``src`` (rows_per_rep rows) repeated to ``total_rows`` rows."""
    arr = np.load(src, mmap_mode="r")
    header = {"descr": arr.dtype.str, "fortran_order": False,
              "shape": (total_rows, *arr.shape[1:])}
    block = np.ascontiguousarray(arr).tobytes()
    row_bytes = len(block) // rows_per_rep
    with open(dst, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        left = total_rows
        while left:
            take = min(left, rows_per_rep)
            fh.write(block if take == rows_per_rep else block[: take * row_bytes])
            left -= take


def synthetic_bundle(base: Path, dst: Path, n: int, noise: float, seed: int,
                     index: str) -> dict[str, Any]:
    """A bundle of ``n`` tracks tiled from the compact ``base`` bundle (see the docstring)."""
    from export.compact_bundle import index_catalogue
    from export.manifest import read_manifest, write_manifest

    manifest = read_manifest(base)
    cat = dict(manifest["catalogue"])
    files = cat["files"]
    ids = json.loads((base / files["ids"]).read_text())
    emb0 = np.load(base / files["emb"])
    lengths0 = np.diff(np.load(base / files["offsets"]))
    n0, d = emb0.shape
    reps = -(-n // n0)
    tic = time.perf_counter()
    shutil.copytree(base / "graphs", dst / "graphs")
    (dst / "catalogue").mkdir()
    (dst / files["ids"]).write_text(json.dumps(
        [m if t == 0 else f"{m}#{t}" for t in range(reps) for m in ids][:n]))
    # noise shaped like the base embeddings' covariance, scaled to `noise` of their spread
    centred = emb0 - emb0.mean(axis=0)
    _, sing, axes = np.linalg.svd(centred, full_matrices=False)
    shape = (sing[:, None] * axes / np.sqrt(n0)).astype(np.float32)  # [D,D]
    rng = np.random.default_rng(seed)
    emb = np.lib.format.open_memmap(dst / files["emb"], "w+", np.float32, (n, d))
    for lo in range(0, n, 100_000):
        rows = np.arange(lo, min(lo + 100_000, n))
        x = emb0[rows % n0] + noise * rng.standard_normal((len(rows), d), np.float32) @ shape
        emb[rows] = x / np.linalg.norm(x, axis=1, keepdims=True)
    emb.flush()
    offsets = np.concatenate([[0], np.cumsum(np.tile(lengths0, reps)[:n])]).astype(np.int64)
    np.save(dst / files["offsets"], offsets)
    total = int(offsets[-1])
    for role in ("tokens", "xpool_states"):
        for key in (role, f"{role}_scales"):
            if key in files:
                _tile_file(dst / files[key], base / files[key], int(lengths0.sum()), total)
    write_s = time.perf_counter() - tic
    tic = time.perf_counter()
    emb_r = np.load(dst / files["emb"], mmap_mode="r")
    cat.update(n_tracks=n, n_snippets=total,
               index=index_catalogue(dst, emb_r, index))
    index_s = time.perf_counter() - tic
    manifest["retrieval"]["xpool_top_k"] = TOP_K
    tic = time.perf_counter()
    write_manifest(dst, {**manifest, "catalogue": cat})
    sha_s = time.perf_counter() - tic
    sizes = {p.relative_to(dst).as_posix(): p.stat().st_size for p in dst.rglob("*")
             if p.is_file()}
    return {"n_tracks": n, "n_snippets": total, "index_kind": cat["index"]["kind"],
            "write_s": round(write_s, 1), "index_build_s": round(index_s, 1),
            "checksums_s": round(sha_s, 1),
            "disk_gb": round(sum(sizes.values()) / 1e9, 2),
            "disk_gb_by_part": {
                "emb": round(sizes[files["emb"]] / 1e9, 2),
                "tokens_int8": round(sum(v for k, v in sizes.items() if "tokens" in k) / 1e9, 2),
                "xpool_states_int8": round(sum(v for k, v in sizes.items()
                                               if "xpool_states" in k) / 1e9, 2),
                "ann_index": round(sum(v for k, v in sizes.items() if "ann_index" in k) / 1e9,
                                   2)}}


#: The search parameter tuned per index kind, and its grid (least value with recall@100 >= 0.99).
SEARCH_GRID = {"hnsw": ("ef_search", (64, 128, 256, 512, 1024, 2048)),
               "ivf": ("nprobe", (8, 16, 32, 64, 128, 256, 512))}


def tune_search(bundle: Path, queries: np.ndarray, kind: str
                ) -> tuple[dict[str, int], list[dict[str, float]]]:
    """Least search parameter of the kind's grid with recall@100 >= 0.99 on ``queries``
    (held out from the measured ones)."""
    from dataclasses import replace

    from export.compact_bundle import INDEX_NAME
    from mgsv_sk.search.ann import load_index

    name, grid = SEARCH_GRID[kind]
    emb = np.load(bundle / "catalogue" / "emb.npy", mmap_mode="r")
    index = load_index(bundle, INDEX_NAME, emb=emb)
    exact = exact_top(emb, queries, TOP_K)
    table = []
    for value in grid:
        index.params = replace(index.params, **{name: value})
        tic = time.perf_counter()
        got = np.concatenate([index.search(queries[i: i + 1], TOP_K)[1]
                              for i in range(len(queries))])
        ms = 1e3 * (time.perf_counter() - tic) / len(queries)
        table.append({name: value, "recall@100": round(recall(got, exact, 100), 4),
                      "recall@10": round(recall(got, exact, 10), 4), "ms": round(ms, 3)})
        print("  tune", table[-1], flush=True)
        if table[-1]["recall@100"] >= 0.99:
            break
    return {name: int(table[-1][name])}, table


def reindex(folder: Path, kind: str) -> dict[str, Any]:
    """Replace the bundle's first-stage index by one of ``kind``; returns its build seconds."""
    from export.compact_bundle import INDEX_NAME, index_catalogue
    from export.manifest import read_manifest, write_manifest

    manifest = read_manifest(folder)
    cat = dict(manifest["catalogue"])
    for old in (folder / "catalogue").glob("ann_index.*"):
        old.unlink()
    tic = time.perf_counter()
    emb = np.load(folder / cat["files"]["emb"], mmap_mode="r")
    cat["index"] = index_catalogue(folder, emb, kind)
    build_s = time.perf_counter() - tic
    known = {rel: info["sha256"] for rel, info in manifest["files"].items()
             if "ann_index" not in rel}  # only the index changed: no need to hash 30 GB again
    write_manifest(folder, {**manifest, "catalogue": cat}, known)
    size = sum(p.stat().st_size for p in (folder / "catalogue").glob("ann_index.*"))
    assert INDEX_NAME.endswith("ann_index")
    return {"index_kind": cat["index"]["kind"], "index_build_s": round(build_s, 1),
            "index_gb": round(size / 1e9, 2)}


# -- main ----------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--quick", action="store_true", help="20k tracks, 40 queries")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--noise", type=float, default=0.5)
    parser.add_argument("--index", nargs="+", default=["auto"],
                        choices=("auto", "exact", "hnsw", "ivf"),
                        help="first-stage index kinds, each measured on the same catalogue")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--serve-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_worker:
        serve_worker(args.serve_worker)
        return
    if args.quick:
        args.sizes, args.queries, args.index = [20_000], 40, ["hnsw", "ivf"]

    import torch

    from export.compact_bundle import compact_bundle
    from export.to_onnx import export_onnx
    from mgsv_sk import MGSVGrounder, make_synthetic_mgsv, pack_features
    from mgsv_sk.search.ann import EXACT_MAX_TRACKS

    torch.set_num_threads(THREADS)
    started = time.perf_counter()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    work = Path(tempfile.mkdtemp(prefix="mgsv_scale_", dir=args.workdir))
    results: dict[str, Any] = {}
    try:
        train = make_synthetic_mgsv(400, 100, random_state=0)
        n_base = 500 if args.quick else 2000
        test = make_synthetic_mgsv(max(n_base, 2 * args.queries), n_base, random_state=1,
                                   split="test")
        tic = time.perf_counter()
        model = MGSVGrounder(features=train.features, max_epochs=1, validation_fraction=0.0,
                             random_state=0, n_threads=1).fit(train.frame)
        model.set_catalogue(test.frame["music_id"].unique(), features=test.features)
        model.set_params(xpool_top_k=TOP_K)
        base32 = export_onnx(model, work / "base32")
        base = compact_bundle(base32, work / "base", states="int8", index="exact")
        shutil.rmtree(base32)
        frame = test.frame.drop(columns="music_id")
        queries, held_out = frame.iloc[: args.queries], frame.iloc[args.queries: 2 * args.queries]
        packed = pack_features(test.features, work / "packed", annotations=test.frame)
        qpath = work / "queries.json"
        queries[["video_id"]].to_json(qpath, orient="split")
        with torch.no_grad():
            tune_q = model._encode_videos(held_out, model._source(test.features)).emb
        print(f"model + base catalogue ready in {time.perf_counter() - tic:.0f} s", flush=True)

        tuning: dict[str, dict[str, list[dict[str, float]]]] = {}
        for n in args.sizes:
            folder = work / f"cat_{n}"
            if shutil.disk_usage(work).free < 40e9 * n / 1e6 + 5e9:
                print(f"skipping {n}: not enough free disk", flush=True)
                continue
            info = synthetic_bundle(base, folder, n, args.noise, seed=n, index=args.index[0])
            print(f"{n} tracks written", info, flush=True)
            entry: dict[str, Any] = {"catalogue": info, "runs": {}}
            for i, kind in enumerate(args.index):
                index_info = ({k: info[k] for k in ("index_kind", "index_build_s")} if i == 0
                              else reindex(folder, kind))
                resolved = index_info["index_kind"]
                search: dict[str, int] = {}
                if resolved in SEARCH_GRID:
                    search, tuning.setdefault(str(n), {})[resolved] = tune_search(
                        folder, tune_q, resolved)
                served = serve(work, folder, packed.path, qpath, f"s{n}_{resolved}",
                               search=search)
                emb = np.load(folder / "catalogue" / "emb.npy", mmap_mode="r")
                exact = exact_top(emb, served.pop("_emb"), TOP_K)
                got = served.pop("_rows")
                served["recall@10"] = round(recall(got, exact, 10), 4)
                served["recall@100"] = round(recall(got, exact, 100), 4)
                entry["runs"][resolved] = {**index_info, "search": search, **served}
                print(n, resolved, json.dumps({k: v for k, v in served.items()
                                               if k != "memory_mb"}), flush=True)
            if n <= 100_000 or args.quick:
                entry["runs"]["exact scan"] = serve(work, folder, packed.path, qpath,
                                                    f"x{n}", exact_first_stage=True)
            results[str(n)] = entry
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    sizes = [s for s in map(str, args.sizes) if s in results]
    small = sizes[0] if sizes else None
    targets: dict[str, dict[str, bool]] = {}
    if "1000000" in results and small is not None:
        for kind, r in results["1000000"]["runs"].items():
            ref = results[small]["runs"].get(kind)
            p50 = r["latency_ms"]["p50"]
            targets[kind] = {
                "1M: MsG p50 <= 30 ms (2 threads)": p50 <= 30,
                f"1M: p50 <= 1.5x the {small}-track p50":
                    ref is not None and p50 <= 1.5 * ref["latency_ms"]["p50"],
                "1M: ANN recall@100 >= 0.99": r.get("recall@100", 1.0) >= 0.99,
                "1M: resident memory <= 2 GB":
                    r["memory_mb"]["after_queries"]["VmRSS"] <= 2048,
            }
    out = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_average_at_start": load_at_start, "threads": THREADS},
        "setup": {"xpool_top_k": TOP_K, "states": "int8", "index": args.index,
                  "exact_max_tracks": EXACT_MAX_TRACKS, "noise": args.noise,
                  "queries": args.queries, "base_tracks": n_base, "quick": args.quick},
        "search_tuning": tuning,
        "by_size": results,
        "targets_met": targets,
        "total_s": round(time.perf_counter() - started, 1),
    }
    name = "catalogue_scale_quick" if args.quick else "catalogue_scale"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=1))
    (RESULTS / f"{name}.md").write_text(markdown(out))
    print(markdown(out))


def markdown(out: dict[str, Any]) -> str:
    lines = ["| tracks | first stage | MsG p50 ms (cold) | p95 (cold) | p50 (warm) | "
             "first stage ms | recall@10 | recall@100 | RSS MB | disk GB | "
             "build s (write + index) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for n, r in out["by_size"].items():
        c = r["catalogue"]
        for kind, s in r["runs"].items():
            search = ", ".join(f"{k} {v}" for k, v in s.get("search", {}).items())
            label = f"{kind} ({search})" if search else kind
            build = f"{c['write_s']} + {s.get('index_build_s', '-')}"
            lines.append(
                f"| {int(n):,} | {label} | {s['latency_ms']['p50']} | {s['latency_ms']['p95']} "
                f"| {s['latency_ms_warm']['p50']} | {s.get('first_stage_ms', '-')} "
                f"| {s.get('recall@10', '-')} | {s.get('recall@100', '-')} "
                f"| {s['memory_mb']['after_queries']['VmRSS']:.0f} | {c['disk_gb']} | {build} |")
    lines.append("")
    for kind, met in out["targets_met"].items():
        lines.append(f"Targets ({kind}): " + ", ".join(
            f"{k}: {'met' if v else 'NOT met'}" for k, v in met.items()))
    lines.append(f"Load average at start: {out['machine']['load_average_at_start']}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
