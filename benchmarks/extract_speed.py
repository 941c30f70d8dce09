"""Feature extraction speed, and the latency of ``recommend`` for one video.

The release's architectures (CLIP ViT-B/32 vision tower + projection, AST base at 10/10
stride on 1024 x 128 inputs) at random weights: the cost is that of the real checkpoints.
Measures, on this machine's ``--n-threads`` cores:

- preprocessing: video decode + resize/crop/normalise (frames/s, 1 frame per second of a
  30 s 640x360 H.264 clip at 30 fps) and audio decode + resample + Kaldi fbank of all 96
  windows of a 240 s 44.1 kHz stereo track (seconds of audio per second);
- the encoders on torch (fp32), onnxruntime fp32 and onnxruntime int8: CLIP frames/s,
  AST windows/s and seconds of audio per second (a track's 96 windows cover 240 s: 2.5 s
  of audio per window);
- end to end: ``MGSVGrounder.recommend`` (paper-size model, d_model 256) for one 30 s video
  against a 2,000-track catalogue (synthetic features; the catalogue encoded once by
  ``set_catalogue``, timed apart), with the torch and the ONNX (fp32 / int8) CLIP encoder.

Results: ``benchmarks/results/extract_speed.json`` and ``.md``.

    python benchmarks/extract_speed.py [--n-threads 2] [--tiny]

``--tiny`` runs the same code with small encoders (a smoke test of the script, seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"


def _best(fn, repeat: int) -> float:
    """Best wall time of ``repeat`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _make_media(folder: Path) -> tuple[Path, Path]:
    import av
    import soundfile as sf

    video = folder / "clip30s.mp4"
    rng = np.random.default_rng(0)
    with av.open(str(video), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        base = rng.integers(0, 255, (360, 640, 3), dtype=np.uint8)
        for i in range(900):
            frame = np.roll(base, 4 * i, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, "rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    audio = folder / "track240s.wav"
    t = np.arange(240 * 44_100) / 44_100
    sf.write(str(audio), np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)],
                                  1).astype(np.float32) * 0.3, 44_100)
    return video, audio


def _encoders(tiny: bool):
    from transformers import ASTConfig, ASTModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    from mgsv_sk.extract import AstEncoder, ClipImageEncoder

    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=2) if tiny else {}
    torch.manual_seed(0)
    clip_cfg = CLIPVisionConfig(image_size=224, patch_size=32, projection_dim=512, **small)
    ast_cfg = ASTConfig(max_length=1024, num_mel_bins=128, **small)
    clip = ClipImageEncoder(CLIPVisionModelWithProjection(clip_cfg), batch_size=32)
    ast = AstEncoder(ASTModel(ast_cfg), batch_size=4)
    return clip, ast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-threads", type=int, default=2)
    parser.add_argument("--windows", type=int, default=8, help="AST windows per timing")
    parser.add_argument("--tiny", action="store_true", help="small encoders: a smoke test")
    args = parser.parse_args()
    torch.set_num_threads(args.n_threads)
    import onnxruntime as ort

    from mgsv_sk.export._encoders import export_encoders
    from mgsv_sk.extract.audio import load_track
    from mgsv_sk.extract.fbank import ast_inputs
    from mgsv_sk.extract.onnx_encoders import OrtEncoder
    from mgsv_sk.extract.video import load_clip

    result: dict = {"threads": args.n_threads, "tiny": args.tiny,
                    "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                    "torch": torch.__version__, "onnxruntime": ort.__version__,
                    "load_average_at_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        video, audio = _make_media(tmp_path)
        clip_s = _best(lambda: load_clip(video), 2)
        n_frames = len(load_clip(video).pixels)
        result["video_preprocess_frames_per_s"] = n_frames / clip_s
        track = load_track(audio)
        decode_s = _best(lambda: load_track(audio), 2)
        fbank_s = _best(lambda: ast_inputs(track.wave, np.arange(96)), 2)
        result["audio_preprocess_audio_s_per_s"] = 240.0 / (decode_s + fbank_s)
        clip, ast = _encoders(args.tiny)
        pixels = load_clip(video).pixels
        fbanks = ast_inputs(track.wave, np.arange(args.windows))
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.n_threads
        options.inter_op_num_threads = 1
        t0 = time.perf_counter()
        info = export_encoders({"video": clip, "music": ast}, tmp_path / "enc", quantize=True)
        result["export_s"] = time.perf_counter() - t0
        backends = {"torch fp32": (clip, ast)}
        for precision in ("fp32", "int8"):
            backends[f"onnxruntime {precision}"] = tuple(
                OrtEncoder(tmp_path / "enc" / info[r]["files"][precision],
                           session_options=options, batch_size=b)
                for r, b in (("video", 32), ("music", 4)))
        result["encoders"] = {}
        for name, (v, m) in backends.items():
            frames_s = _best(lambda v=v: v.encode(pixels), 2)
            windows_s = _best(lambda m=m: m.encode(fbanks), 1)
            result["encoders"][name] = {
                "clip_frames_per_s": len(pixels) / frames_s,
                "ast_windows_per_s": len(fbanks) / windows_s,
                "ast_audio_s_per_s": 2.5 * len(fbanks) / windows_s,
                "cosine_vs_torch_min": 1.0 if name == "torch fp32" else float(min(
                    _cos(v.encode(pixels[:4]), clip.encode(pixels[:4])),
                    _cos(m.encode(fbanks[:2]), ast.encode(fbanks[:2])))),
            }
        result["recommend"] = _recommend(video, backends, args.n_threads)
    RESULTS.mkdir(exist_ok=True)
    name = "extract_speed_tiny" if args.tiny else "extract_speed"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / f"{name}.md").write_text(_table(result))
    print(_table(result))


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    from mgsv_sk.export._encoders import cosines

    return float(cosines(a, b).min())


def _recommend(video: Path, backends: dict, threads: int) -> dict:
    from mgsv_sk import MGSVGrounder
    from mgsv_sk.data.synthetic import make_synthetic_mgsv

    train = make_synthetic_mgsv(256, 64, random_state=0)
    model = MGSVGrounder(features=train.features, max_epochs=1, validation_fraction=0,
                         random_state=0, n_threads=threads).fit(train.frame)
    catalogue = make_synthetic_mgsv(2000, 2000, random_state=1, split="test")
    t0 = time.perf_counter()
    model.set_catalogue(catalogue.frame["music_id"], features=catalogue.features)
    out = {"catalogue_tracks": 2000, "set_catalogue_s": time.perf_counter() - t0}
    for name, (v, _) in backends.items():
        out[f"{name} s"] = _best(lambda v=v: model.recommend(video, k=10, video_encoder=v), 2)
    return out


def _table(r: dict) -> str:
    lines = [f"Feature extraction on {r['threads']} CPU threads (1-min load average at start "
             f"{r['load_average_at_start']:.1f})"
             + (" (tiny encoders: smoke test)" if r["tiny"] else
                " (CLIP ViT-B/32 and AST base at random weights)"), "",
             "| backend | CLIP frames/s | AST windows/s | audio s/s (AST) | min cosine vs torch |",
             "|---|---|---|---|---|"]
    for name, e in r["encoders"].items():
        lines.append(f"| {name} | {e['clip_frames_per_s']:.1f} | {e['ast_windows_per_s']:.2f} | "
                     f"{e['ast_audio_s_per_s']:.2f} | {e['cosine_vs_torch_min']:.5f} |")
    rec = r["recommend"]
    video_fps, audio_rate = (r["video_preprocess_frames_per_s"],
                             r["audio_preprocess_audio_s_per_s"])
    lines += ["", f"Preprocessing: video decode + resize/crop {video_fps:.0f} frames/s; "
              f"audio decode + resample + fbank {audio_rate:.0f} s of audio/s.", "",
              f"`recommend` for one 30 s video against {rec['catalogue_tracks']} tracks "
              f"(catalogue encoded once by set_catalogue: {rec['set_catalogue_s']:.2f} s):", "",
              "| video encoder | latency (s) |", "|---|---|"]
    lines += [f"| {k[:-2]} | {v:.2f} |" for k, v in rec.items() if k.endswith(" s")]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
