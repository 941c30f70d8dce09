"""Build the fixture of the torch-free serving tests (``tests/test_serving.py``).

Run where torch is installed: fits a tiny MGSVGrounder on seeded synthetic data, exports
its ONNX bundle, packs the features it serves, and writes the torch backend's
predictions as the reference the onnxruntime backend must match::

    python tests/serving_fixture.py /tmp/serving-fixture

``.ci/run`` does this in the full environment, then runs ``test_serving.py`` in an
environment installed without torch, against that folder (``MGSV_SERVING_FIXTURE``).
"""

from __future__ import annotations

import sys
from pathlib import Path

TINY = dict(d_model=32, n_heads=2, encoder_layers=1, decoder_layers=2, batch_size=32,
            max_epochs=2, patience=2, random_state=0, n_threads=1)


def build(out: Path) -> Path:
    from mgsv_sk import MGSVGrounder, make_synthetic_mgsv, pack_features
    from mgsv_sk.export.to_onnx import export_onnx

    out.mkdir(parents=True, exist_ok=True)
    data = make_synthetic_mgsv(80, 20, random_state=0)
    model = MGSVGrounder(features=data.features, **TINY).fit(data.frame)
    export_onnx(model, out / "bundle", overwrite=True)
    pack_features(data.features, out / "packed", annotations=data.frame, overwrite=True)
    X = data.frame.iloc[:16]
    X.to_csv(out / "X.csv", index=False)
    model.predict(X).to_csv(out / "smg.csv", index=False)
    model.predict(X.drop(columns="music_id")).to_csv(out / "msg.csv", index=False)
    model.rank(X.drop(columns="music_id"), k=3).to_csv(out / "rank.csv", index=False)
    return out


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
