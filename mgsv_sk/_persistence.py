"""Pickle-free persistence of a fitted MGSVGrounder.

A saved model is a folder:

- ``config.json``: the estimator's parameters, fitted metadata (history, epochs, the
  catalogue's ids) and library versions;
- ``weights.npz``: the network's tensors as float32 arrays (read with
  ``allow_pickle=False``);
- ``catalogue.npz``: the catalogue's cached encodings;
- ``manifest.json``: the sha256 of every other file, checked at load.

It is written under a temporary name and renamed into place, so a crash never leaves a
folder that loads.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ._atomic import MODEL_FOLDER, atomic_directory
from .ranking import MusicCatalogue

if TYPE_CHECKING:
    from .estimator import MGSVGrounder

__all__ = ["ModelFileError", "load_grounder", "save_grounder", "sha256_file"]

#: /2: the catalogue caches X-Pool snippet states instead of keys | values.
FORMAT = "mgsv_sk.model/2"
_FILES = ("config.json", "weights.npz", "catalogue.npz")


class ModelFileError(ValueError):
    """A saved model is missing, damaged or of another format."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _json_safe(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.device):
        return str(value)  # device=torch.device("cuda") is saved as "cuda"
    return None  # e.g. an in-memory feature source: not saved


def save_grounder(est: MGSVGrounder, path: str | os.PathLike[str], overwrite: bool) -> None:
    params = {k: _json_safe(v) for k, v in est.get_params(deep=False).items()}
    cat = est.catalogue_
    config = {
        "format": FORMAT,
        "params": params,
        "model_config": {"video_dim": est.model_.cfg.video_dim,
                         "music_dim": est.model_.cfg.music_dim},
        "fitted": {"catalogue_ids": cat.ids, "history": est.history_,
                   "best_epoch": est.best_epoch_, "n_epochs": est.n_epochs_,
                   "stopped": est.stopped_},
        "versions": {"torch": torch.__version__, "numpy": np.__version__},
    }
    with atomic_directory(path, overwrite=overwrite, replaces=MODEL_FOLDER) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        state = {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().numpy()
                 for k, v in est.model_.state_dict().items()}
        np.savez(tmp / "weights.npz", **state)
        arrays: dict[str, Any] = {"emb": cat.emb, "tokens": cat.tokens, "offsets": cat.offsets}
        if cat.xpool_states is not None:
            arrays["xpool_states"] = cat.xpool_states
        np.savez(tmp / "catalogue.npz", **arrays)
        manifest = {"format": FORMAT, "sha256": {f: sha256_file(tmp / f) for f in _FILES}}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))


def _verified(folder: Path) -> dict[str, Any]:
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"no saved MGSVGrounder at {folder!s} (manifest.json missing); write one with "
            "MGSVGrounder.save(path)"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{manifest_path!s} is corrupt: {exc}") from exc
    if manifest.get("format") != FORMAT:
        raise ModelFileError(f"{folder!s} holds format {manifest.get('format')!r}, "
                             f"expected {FORMAT!r}")
    for name in _FILES:
        file = folder / name
        if not file.is_file():
            raise ModelFileError(f"saved model {folder!s} lacks {name}; save it again")
        if sha256_file(file) != manifest["sha256"].get(name):
            raise ModelFileError(
                f"checksum mismatch for {file!s}: the file was changed or damaged after "
                "saving; refusing to load it"
            )
    config: dict[str, Any] = json.loads((folder / "config.json").read_text())
    return config


def load_grounder(cls: type[MGSVGrounder], path: str | os.PathLike[str],
                  features: Any = None) -> MGSVGrounder:
    from .nn.model import MaDe

    folder = Path(path)
    config = _verified(folder)
    params = dict(config["params"])
    if isinstance(params.get("retrieval_scores"), list):
        params["retrieval_scores"] = tuple(params["retrieval_scores"])
    if features is not None:
        params["features"] = features
    est = cls(**params)
    dims = config["model_config"]
    model = MaDe(est._model_config(dims["video_dim"], dims["music_dim"]))
    with np.load(folder / "weights.npz", allow_pickle=False) as weights:
        state = {k: torch.from_numpy(weights[k].copy()) for k in weights.files}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # missing / unexpected keys, other shapes
        raise ModelFileError(
            f"the weights in {folder / 'weights.npz'!s} do not fit the model its config.json "
            f"describes ({str(exc).splitlines()[0]}); it was saved by another version of "
            "mgsv_sk or edited: save it again with this version"
        ) from exc
    model.eval()
    with np.load(folder / "catalogue.npz", allow_pickle=False) as arrays:
        states = arrays["xpool_states"].copy() if "xpool_states" in arrays.files else None
        catalogue = MusicCatalogue(config["fitted"]["catalogue_ids"], arrays["emb"].copy(),
                                   arrays["tokens"].copy(), states, arrays["offsets"].copy())
    fitted = config["fitted"]
    est.model_ = model
    est.catalogue_ = catalogue
    est.catalogue_ids_ = catalogue.ids
    est.history_ = fitted["history"]
    est.best_epoch_ = fitted["best_epoch"]
    est.n_epochs_ = fitted["n_epochs"]
    est.stopped_ = fitted["stopped"]
    from ._base import new_fit_token

    est.fit_token_ = new_fit_token()
    return est
