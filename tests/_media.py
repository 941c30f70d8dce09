"""Small media files with known content, and tiny random encoders, for the extraction tests."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np


def write_video(path: Path, seconds: float, fps: int = 10, size: tuple[int, int] = (64, 48),
                seed: int = 0) -> Path:
    """An mp4 whose frame i is a flat grey of value (4 i) mod 256 plus a seeded pattern
    (the pattern differs between seeds, so videos are distinguishable)."""
    import av

    rng = np.random.default_rng(seed)
    pattern = rng.integers(0, 60, size=(size[1] // 8, size[0] // 8, 3)).repeat(8, 0).repeat(8, 1)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.options = {"qscale": "1"}
        for i in range(int(round(seconds * fps))):
            img = np.full((size[1], size[0], 3), (4 * i) % 200, np.uint8) + pattern.astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, "rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_audio(path: Path, seconds: float, rate: int = 22_050, freq: float = 440.0,
                channels: int = 2) -> Path:
    """A WAV file: channel 0 a sine of ``freq`` Hz at amplitude 0.5, channel 1 noise."""
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    data = np.zeros((len(t), channels), np.float32)
    data[:, 0] = 0.5 * np.sin(2 * np.pi * freq * t)
    if channels > 1:
        data[:, 1] = np.random.default_rng(0).normal(0, 0.1, len(t))
    sf.write(str(path), data, rate)
    return path


def write_media_set(root: Path, tracks: dict[str, float], n_videos: int) -> list[dict]:
    """``root/music/<id>.wav`` for each track (id -> seconds, a tone each) and
    ``root/videos/clip<i>.mp4`` (3-5 s, cycling over the tracks, starting at 0 or 2.5 s);
    returns the videos' annotation rows."""
    (root / "videos").mkdir(parents=True, exist_ok=True)
    (root / "music").mkdir(parents=True, exist_ok=True)
    for i, (name, seconds) in enumerate(tracks.items()):
        write_audio(root / "music" / f"{name}.wav", seconds, freq=220 * (i + 1))
    rows = []
    for i in range(n_videos):
        seconds = 3.0 + i % 3
        write_video(root / "videos" / f"clip{i}.mp4", seconds, seed=i)
        name = list(tracks)[i % len(tracks)]
        start = float(i % 2) * 2.5
        rows.append({"video_id": f"clip{i}", "music_id": name, "video_start": 0.0,
                     "video_end": seconds, "music_start": start, "music_end": start + seconds,
                     "music_total_duration": tracks[name]})
    return rows


def tiny_clip():
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from mgsv_sk.extract import ClipImageEncoder

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=224, patch_size=32,
                           projection_dim=512)
    return ClipImageEncoder(CLIPVisionModelWithProjection(cfg), batch_size=32)


def tiny_ast():
    import torch
    from transformers import ASTConfig, ASTModel

    from mgsv_sk.extract import AstEncoder

    torch.manual_seed(0)
    cfg = ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, max_length=1024, num_mel_bins=128)
    return AstEncoder(ASTModel(cfg), batch_size=16)


class StubMusicEncoder:
    """A cheap 768-d encoder (a fixed projection of the mean fbank frame), for checking
    the release layout, which holds 768-d music features."""

    name = "stub"
    dim = 768

    def __init__(self) -> None:
        self.proj = np.random.default_rng(0).normal(size=(128, 768)).astype(np.float32)

    def encode(self, inputs: np.ndarray) -> np.ndarray:
        return inputs.mean(axis=1) @ self.proj


def write_big(path: Path, width: int, height: int, frames: int, codec: str = "libx264",
              fps: int = 1) -> Path:
    """A few frames of a smooth gradient: kilobytes on disk, whatever the frame size."""
    import av

    y = (np.add.outer(np.arange(height) // 64, np.arange(width) // 64) % 200 + 20)
    plane = np.concatenate([y.astype(np.uint8), np.full((height // 2, width), 128, np.uint8)])
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.codec_context.options = {"preset": "ultrafast"}
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(plane, "yuv420p")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
