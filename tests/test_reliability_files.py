"""Issue 12, family 4: damaged or hostile files are the library's own error.

Every reader checks declared shapes and sizes before copying anything and turns a
malformed artefact into ``FeatureError`` (feature files, packed stores: ``mgsv_sk`` and
the torch-free runtime alike) or ``ModelFileError`` (saved models), naming the file and
what is wrong.
"""

from __future__ import annotations

import json
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY

from mgsv_sk import MGSVGrounder, make_synthetic_mgsv, pack_features
from mgsv_sk.data.features import (
    FeatureError,
    FeatureTree,
    InMemoryFeatures,
    PackedFeatures,
    as_feature_source,
)
from mgsv_sk.estimators._persistence import ModelFileError
from mgsv_sk.files._atomic import file_checksums


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_mgsv(12, 4, random_state=7,
                               path=tmp_path_factory.mktemp("files") / "release")


@pytest.fixture
def tree(data, tmp_path):
    root = tmp_path / "tree"
    shutil.copytree(data.root, root)
    return FeatureTree(root)


def _video_paths(src: FeatureTree, vid: str) -> tuple[Path, Path]:
    base = src.base / "vit_feature1"
    return base / "vit_feature" / f"{vid}.pt", base / "vit_mask" / f"{vid}.pt"


def _music_paths(src: FeatureTree, mid: str) -> tuple[Path, Path]:
    base = src.base / "ast_feature2p5"
    return base / "ast_feature" / f"{mid}.pt", base / "ast_mask" / f"{mid}.pt"


# == .pt feature files ======================================================================
@pytest.mark.parametrize("rows", [100_000_000, 1_000_000], ids=["1e8-rows", "1e6-rows"])
def test_a_tiny_file_declaring_a_huge_tensor_is_refused_without_allocating(
        rows, tree, data):
    vid = data.frame["video_id"].iloc[0]
    feat, mask = _video_paths(tree, vid)
    torch.save(torch.zeros(1).expand(rows, 512), feat)  # stride 0: a 1.5 KB file
    mask.unlink()
    assert feat.stat().st_size < 4096
    tracemalloc.start()
    try:
        with pytest.raises(FeatureError, match=rf"declares {rows} rows, more than the 100000"):
            tree.video(vid)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 << 20


def test_a_long_music_file_costs_only_the_rows_the_model_reads(tree, data):
    mid = data.frame["music_id"].iloc[0]
    feat, mask = _music_paths(tree, mid)
    torch.save(torch.arange(50_000, dtype=torch.float32)[:, None].expand(50_000, 768), feat)
    mask.unlink()
    tracemalloc.start()
    try:
        with pytest.warns(UserWarning, match="cut at 240 s"):
            arr = tree.music(mid)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert arr.shape == (96, 768) and (arr[:, 0] == np.arange(96)).all()
    assert peak < 20 << 20  # not the 150 MB the declared tensor would take


def test_a_video_with_too_many_valid_frames_is_refused_before_copying(tree, data):
    vid = data.frame["video_id"].iloc[0]
    feat, mask = _video_paths(tree, vid)
    torch.save(torch.zeros(1).expand(5000, 512), feat)
    torch.save(torch.ones(5000), mask)
    with pytest.raises(FeatureError, match="has 5000 frames, more than the 50"):
        tree.video(vid)


def test_a_complex_feature_file_is_refused_not_cast(tree, data):
    vid = data.frame["video_id"].iloc[0]
    feat, _ = _video_paths(tree, vid)
    torch.save(torch.complex(torch.ones(1, 50, 512), torch.ones(1, 50, 512)), feat)
    with pytest.raises(FeatureError, match=r"is a torch.complex64 tensor .*expected real"):
        tree.video(vid)


@pytest.mark.parametrize("value", [2.0, -1.0, 0.5])
def test_a_mask_must_hold_only_zeros_and_ones(value, tree, data):
    vid = data.frame["video_id"].iloc[0]
    _, mask = _video_paths(tree, vid)
    m = torch.load(mask)
    m.view(-1)[0] = value
    torch.save(m, mask)
    with pytest.raises(FeatureError, match=rf"mask of video features at .* holds \[{value}\], "
                                           "not only 0 and 1"):
        tree.video(vid)
    with pytest.raises(FeatureError, match=rf"holds \[{value}\], not only 0 and 1"):
        InMemoryFeatures({"v": np.ones((3, 512))}, {},
                         video_masks={"v": np.array([1.0, value, 0.0])})


def test_a_mask_whose_length_differs_is_refused_before_reading_it(tree, data):
    vid = data.frame["video_id"].iloc[0]
    _, mask = _video_paths(tree, vid)
    torch.save(torch.ones(1).expand(10_000_000), mask)
    with pytest.raises(FeatureError, match=r"mask of video features .* has shape "
                                           r"\(10000000,\), expected \(50,\)"):
        tree.video(vid)


def test_bool_and_integer_masks_and_legacy_files_still_read(tree, data):
    vid = data.frame["video_id"].iloc[0]
    feat, mask = _video_paths(tree, vid)
    expected = tree.video(vid)
    m = torch.load(mask)
    torch.save(m.bool(), mask)
    np.testing.assert_array_equal(tree.video(vid), expected)
    torch.save(m.long(), mask, _use_new_zipfile_serialization=False)
    torch.save(torch.load(feat), feat, _use_new_zipfile_serialization=False)
    np.testing.assert_array_equal(tree.video(vid), expected)


# == packed stores (mgsv_sk and the torch-free runtime) =====================================
@pytest.fixture
def store(data, tmp_path):
    return pack_features(data.features, tmp_path / "store", annotations=data.frame).path


def _edit_meta(store: Path, edit) -> None:
    meta = json.loads((store / "meta.json").read_text())
    (store / "meta.json").write_text(json.dumps(edit(meta)))


def _set(meta, table, key, value):
    meta[table][key] = value
    return meta


PACKED_DAMAGE = [
    ("meta-list", lambda s: (s / "meta.json").write_text('["mgsv_sk.packed/1"]'),
     r"is not a packed store of format 'mgsv_sk.packed/1' \(meta.json holds 'a JSON list'\)"),
    ("meta-not-utf8", lambda s: (s / "meta.json").write_bytes(b'{"format": "\xff"}'),
     "meta.json is corrupt"),
    ("no-table", lambda s: _edit_meta(s, lambda m: {k: v for k, v in m.items() if k != "music"}),
     "is damaged: meta.json has no 'music' table"),
    ("ids-not-list", lambda s: _edit_meta(s, lambda m: _set(m, "video", "ids", "abc")),
     "video ids are not a list of strings"),
    ("rows-negative", lambda s: _edit_meta(s, lambda m: _set(m, "video", "rows", -4)),
     "video rows is -4, expected an integer >= 0"),
    ("dim-string", lambda s: _edit_meta(s, lambda m: _set(m, "music", "dim", "768")),
     "music dim is '768', expected an integer >= 1"),
    ("offsets-not-monotone", lambda s: np.save(
        s / "video_offsets.npy", np.load(s / "video_offsets.npy")[[0, 2, 1, *range(3, 13)]]),
     "video_offsets.npy is not increasing from 0"),
    ("offsets-short", lambda s: np.save(s / "video_offsets.npy",
                                        np.load(s / "video_offsets.npy")[:-1]),
     r"video_offsets.npy has shape \(12,\) of int64, expected \(13,\) integers"),
    ("offsets-truncated", lambda s: (s / "music_offsets.npy").write_bytes(
        (s / "music_offsets.npy").read_bytes()[:-8]), "music_offsets.npy is unreadable"),
    ("offsets-float", lambda s: np.save(s / "video_offsets.npy",
                                        np.load(s / "video_offsets.npy").astype(float)),
     "of float64, expected"),
    ("data-truncated", lambda s: (s / "music_features.f32").write_bytes(
        (s / "music_features.f32").read_bytes()[:-4]), r"music_features.f32 has \d+ bytes"),
]


@pytest.mark.parametrize("reader", ["mgsv_sk", "runtime"])
@pytest.mark.parametrize("damage, message", [c[1:] for c in PACKED_DAMAGE],
                         ids=[c[0] for c in PACKED_DAMAGE])
def test_a_damaged_packed_store_is_a_feature_error(reader, damage, message, store):
    damage(store)
    # the runtime opens a store by path through the core's one reader
    open_store = PackedFeatures if reader == "mgsv_sk" else as_feature_source
    with pytest.raises(FeatureError, match=message) as info:
        open_store(store)
    assert str(store) in str(info.value)


# == saved models ===========================================================================
@pytest.fixture(scope="module")
def saved(data, tmp_path_factory):
    est = MGSVGrounder(features=data.features, **{**TINY, "max_epochs": 1}).fit(data.frame)
    path = tmp_path_factory.mktemp("saved") / "model"
    est.save(path)
    return path


def _rehash(model: Path) -> None:
    """Make the manifest agree with edited files: only the content checks can catch it."""
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["files"] = file_checksums(model, manifest["files"])
    (model / "manifest.json").write_text(json.dumps(manifest))


def _edit_config(model: Path, edit) -> None:
    config = json.loads((model / "config.json").read_text())
    edit(config)
    (model / "config.json").write_text(json.dumps(config))
    _rehash(model)


def _truncate_rehashed(model: Path, name: str) -> None:
    (model / name).write_bytes((model / name).read_bytes()[:-300])
    _rehash(model)


def _forge_npz(model: Path, name: str, key: str, shape: tuple[int, ...]) -> None:
    """Rewrite one array's header to declare ``shape`` (same bytes after it)."""
    import zipfile

    with np.load(model / name) as arrays:
        content = {k: arrays[k] for k in arrays.files}
    np.savez(model / name, **content)
    with zipfile.ZipFile(model / name) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    raw = members[f"{key}.npy"]
    header_len = 10 + int.from_bytes(raw[8:10], "little")
    header = raw[10:header_len].decode("latin1")
    at = header.index("'shape': ") + 9
    old_shape = header[at: header.index(")", at) + 1]
    new = header.replace(old_shape, str(shape)).ljust(header_len - 10)[: header_len - 10]
    members[f"{key}.npy"] = raw[:10] + new.encode("latin1") + raw[header_len:]
    with zipfile.ZipFile(model / name, "w") as zf:
        for member, blob in members.items():
            zf.writestr(member, blob)
    _rehash(model)


MODEL_DAMAGE = [
    ("manifest-list", lambda m: (m / "manifest.json").write_text("[1, 2]"),
     r"manifest.json holds a JSON list, expected the manifest"),
    ("manifest-no-sha256", lambda m: (m / "manifest.json").write_text(
        json.dumps({"format": "mgsv_sk.model/3"})), "manifest.json lacks the sha256 of"),
    ("manifest-sha256-list", lambda m: (m / "manifest.json").write_text(
        json.dumps({"format": "mgsv_sk.model/3", "sha256": []})), "lacks the sha256"),
    ("manifest-not-utf8", lambda m: (m / "manifest.json").write_bytes(b'{"format": "\xff"}'),
     r"manifest.json is not UTF-8 text \(byte 12"),
    ("config-unknown-param", lambda m: _edit_config(
        m, lambda c: c["params"].update(warp_drive=9)),
     r"has unknown parameter\(s\) \['warp_drive'\] for MGSVGrounder"),
    ("config-list", lambda m: ((m / "config.json").write_text("[]"), _rehash(m)),
     "config.json holds a JSON list, expected the model's config"),
    ("config-no-fitted", lambda m: _edit_config(m, lambda c: c.pop("fitted")),
     "lacks the 'fitted' object"),
    ("config-bad-dim", lambda m: _edit_config(
        m, lambda c: c["model_config"].update(video_dim="512")),
     r"model_config.video_dim = '512', expected a positive integer"),
    ("config-ids-not-strings", lambda m: _edit_config(
        m, lambda c: c["fitted"].update(catalogue_ids=[1, 2])), "not a list of strings"),
    ("weights-truncated", lambda m: _truncate_rehashed(m, "weights.npz"),
     r"cannot read the weights in .*weights.npz: BadZipFile"),
    ("catalogue-truncated", lambda m: _truncate_rehashed(m, "catalogue.npz"),
     r"cannot read the catalogue in .*catalogue.npz"),
    ("weights-huge-shape", lambda m: _forge_npz(m, "weights.npz", _first_weight(m),
                                                 (100000000, 512)),
     r"declares shape \(100000000, 512\) .* \(truncated or forged\)"),
    ("catalogue-forged-offsets", lambda m: _forge_npz(m, "catalogue.npz", "offsets", (2,)),
     r"array 'offsets' declares shape \(2,\) of int64 \(16 bytes\) but its member holds"),
    ("catalogue-short-offsets", lambda m: _rewrite_catalogue(
        m, offsets=lambda o: o[:-1]), r"catalogue in .* is malformed: offsets have shape"),
    ("catalogue-offsets-not-monotone", lambda m: _rewrite_catalogue(
        m, offsets=lambda o: o[[0, 2, 1, *range(3, len(o))]]),
     "offsets do not start at 0, rise by at least 1 per track"),
    ("catalogue-emb-width", lambda m: _rewrite_catalogue(m, emb=lambda e: e[:, :-1]),
     r"emb has shape \(4, 31\), expected \(4, 32\)"),
    ("catalogue-complex", lambda m: _rewrite_catalogue(m, tokens=lambda t: t + 0j),
     "tokens has dtype complex"),
]


def _rewrite_catalogue(model: Path, **edits) -> None:
    with np.load(model / "catalogue.npz") as arrays:
        content = {k: edits.get(k, lambda a: a)(arrays[k]) for k in arrays.files}
    np.savez(model / "catalogue.npz", **content)
    _rehash(model)


def _first_weight(model: Path) -> str:
    with np.load(model / "weights.npz") as arrays:
        return next(k for k in arrays.files if arrays[k].ndim == 2)


@pytest.mark.parametrize("damage, message", [c[1:] for c in MODEL_DAMAGE],
                         ids=[c[0] for c in MODEL_DAMAGE])
def test_a_damaged_or_edited_model_folder_is_a_model_file_error(damage, message, saved,
                                                                 tmp_path):
    model = tmp_path / "model"
    shutil.copytree(saved, model)
    damage(model)
    with pytest.raises(ModelFileError, match=message):
        MGSVGrounder.load(model)


def test_an_intact_model_still_loads_and_predicts(saved, data):
    est = MGSVGrounder.load(saved, features=data.features)
    assert len(est.predict(data.frame.iloc[:2])) == 2
