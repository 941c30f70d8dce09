"""Build the fixture of the service tests (``tests/test_serve*.py``).

Run where torch is installed: writes small audio tracks and videos, extracts them with
tiny random encoders, fits a tiny MGSVGrounder, exports its ONNX bundle with the encoders,
and builds a catalogue store of the audio files with the bundle's ONNX music encoder (so
the store records each track's file)::

    python tests/serve_fixture.py /tmp/serve-fixture

``.ci/run`` does this in the full environment, then runs ``test_serve.py`` in an
environment installed without torch (``.[serve]``), against that folder
(``MGSV_SERVE_FIXTURE``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

#: music_id -> seconds of the catalogue's tracks.
TRACKS = {"song_a": 14.0, "song_b": 20.0, "song_c": 9.0, "song_d": 16.0}
#: The query video's seconds.
QUERY_SECONDS = 4.5


def build(out: Path) -> Path:
    import pandas as pd
    from _media import tiny_ast, tiny_clip, write_media_set, write_video

    from mgsv_sk import MGSVGrounder
    from mgsv_sk.cli import main
    from mgsv_sk.export.to_onnx import export_onnx
    from mgsv_sk.extract import extract_features

    rows = write_media_set(out, TRACKS, 8)
    write_video(out / "query.mp4", QUERY_SECONDS, seed=99)
    write_video(out / "other.mp4", 3.0, seed=7)
    write_video(out / "long.mp4", 8.0, seed=5)
    (out / "notes.txt").write_text("not a video\n")
    (out / "broken.mp4").write_bytes(b"\x00" * 2048)
    clip, ast = tiny_clip(), tiny_ast()
    report = extract_features(out / "packed", videos=[out / "videos"], music=[out / "music"],
                              video_encoder=clip, music_encoder=ast, layout="packed", batch=8)
    assert not report.failed
    model = MGSVGrounder(features=report.output, d_model=32, n_heads=2, encoder_layers=1,
                         decoder_layers=1, batch_size=8, max_epochs=1, validation_fraction=0,
                         random_state=0, n_threads=1).fit(pd.DataFrame(rows))
    bundle = export_onnx(model, out / "bundle", encoders={"video": clip, "music": ast},
                         overwrite=True)
    manifest = json.loads((bundle / "manifest.json").read_text())
    music_encoder = bundle / manifest["encoders"]["music"]["files"]["fp32"]
    assert main(["-q", "catalogue", str(out / "music"), str(out / "catalogue"),
                 "--music-encoder", str(music_encoder)]) == 0
    return out


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
