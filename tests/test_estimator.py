"""MGSVGrounder: the scikit-learn contract, SmG / MsG / rank semantics, persistence."""

from __future__ import annotations

import io
import logging

import joblib
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY
from sklearn.base import clone

from mgsv_sk import MGSVGrounder, evaluate, get_scorer, make_synthetic_mgsv
from mgsv_sk.estimators._persistence import ModelFileError
from mgsv_sk.grounding import PREDICTION_COLUMNS, RANK_COLUMNS


def test_every_hyper_parameter_is_visible_and_clonable(small_train):
    est = MGSVGrounder(features=small_train.features, **TINY)
    params = est.get_params()
    for name in (
        "d_model",
        "n_heads",
        "encoder_layers",
        "decoder_layers",
        "temporal_dropout",
        "retrieval_scores",
        "l1_weight",
        "giou_weight",
        "fg_weight",
        "lr",
        "batch_size",
        "max_epochs",
        "patience",
        "validation_fraction",
        "device",
        "n_threads",
        "random_state",
        "verbose",
        "bf16",
        "xpool_top_k",
    ):
        assert name in params
    twin = clone(est)
    assert twin.get_params()["d_model"] == 32 and twin.features is est.features
    assert MGSVGrounder().d_model == 256 and MGSVGrounder().decoder_layers == 6


def test_fit_records_history_and_the_catalogue(tiny_fitted, small_train):
    hist = pd.DataFrame(tiny_fitted.history_)
    assert {
        "train_total",
        "train_window",
        "train_boundary",
        "train_match",
        "train_snippet",
        "train_dual",
        "train_xpool",
        "val_mIoU",
        "val_R@1",
        "val_MoR@10,0.5",
        "lr",
        "seconds",
    } <= set(hist.columns)
    assert len(hist) == tiny_fitted.n_epochs_ >= 1
    assert hist["train_total"].iloc[-1] < hist["train_total"].iloc[0]
    assert set(tiny_fitted.catalogue_ids_) == set(small_train.frame["music_id"])
    assert 1 <= tiny_fitted.best_epoch_ <= tiny_fitted.n_epochs_


def test_smg_predict_is_aligned_with_x(tiny_fitted, small_test):
    X = small_test.frame.set_index(pd.Index(np.arange(100, 100 + len(small_test.frame))))
    pred = tiny_fitted.predict(X, features=small_test.features)
    assert list(pred.columns) == list(PREDICTION_COLUMNS)
    assert pred.index.equals(X.index)
    assert (pred["music_id"] == X["music_id"]).all()
    assert ((0 <= pred["start"]) & (pred["start"] <= pred["end"]) & (pred["end"] <= 240)).all()
    assert pred.notna().all().all()
    assert ((pred["moment_score"] >= 0) & (pred["moment_score"] <= 1)).all()


def test_msg_grounds_on_the_retrieved_track_not_the_true_one(tiny_fitted, small_train):
    X = small_train.frame.iloc[:40]
    msg = tiny_fitted.predict(X.drop(columns="music_id"))
    table = tiny_fitted.decision_function(X)
    assert (
        msg["music_id"].to_numpy() == np.array(tiny_fitted.catalogue_ids_)[table.argmax(1)]
    ).all()
    # the same moments as SmG on the retrieved track ...
    on_retrieved = tiny_fitted.predict(X.assign(music_id=msg["music_id"].to_numpy()))
    np.testing.assert_allclose(msg[["start", "end"]], on_retrieved[["start", "end"]], atol=1e-6)
    np.testing.assert_allclose(msg["score"], on_retrieved["score"], atol=1e-5)
    # ... which differ from SmG on the true track wherever retrieval missed
    wrong = (msg["music_id"] != X["music_id"]).to_numpy()
    assert wrong.any(), "the tiny model should miss some tracks"
    on_true = tiny_fitted.predict(X)
    cols = ["start", "moment_score"]
    assert not np.allclose(msg.loc[wrong, cols], on_true.loc[wrong, cols])


def test_rank_gives_sorted_top_k_with_moments(tiny_fitted, small_train):
    X = small_train.frame.iloc[:10].drop(columns="music_id")
    ranked = tiny_fitted.rank(X, k=4)
    assert list(ranked.columns) == list(RANK_COLUMNS) and len(ranked) == 40
    for _, group in ranked.groupby("video_id", sort=False):
        assert group["rank"].tolist() == [1, 2, 3, 4]
        assert group["score"].is_monotonic_decreasing
        assert group["music_id"].is_unique
    top1 = ranked[ranked["rank"] == 1].reset_index(drop=True)
    msg = tiny_fitted.predict(X).reset_index(drop=True)
    assert (top1["music_id"] == msg["music_id"]).all()
    np.testing.assert_allclose(top1["start"], msg["start"], atol=1e-6)
    everything = tiny_fitted.rank(X.iloc[:2], k=10_000)
    assert len(everything) == 2 * len(tiny_fitted.catalogue_ids_)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        tiny_fitted.rank(X, k=0)


def test_decision_function_over_catalogue_or_given_tracks(tiny_fitted, small_train):
    X = small_train.frame.iloc[:12]
    table = tiny_fitted.decision_function(X, moment_weight=0)  # plain retrieval scores
    assert table.shape == (12, len(tiny_fitted.catalogue_ids_))
    some = tiny_fitted.catalogue_ids_[::3]
    sub = tiny_fitted.decision_function(X, music_ids=some, moment_weight=0)
    np.testing.assert_allclose(sub, table[:, ::3], atol=1e-5)
    # re-ranked (the default), the candidates are the given gallery's own best tracks
    assert tiny_fitted.decision_function(X, music_ids=some).shape == sub.shape


def test_set_catalogue_serves_another_collection(tiny_model, small_test):
    new_ids = small_test.frame["music_id"].unique()[:20]
    tiny_model.set_catalogue(new_ids, features=small_test.features)
    assert tiny_model.catalogue_ids_ == list(new_ids)
    msg = tiny_model.predict(
        small_test.frame.drop(columns="music_id"), features=small_test.features
    )
    assert set(msg["music_id"]) <= set(new_ids)
    with pytest.raises(Exception, match="no features for 1 track"):
        tiny_model.set_catalogue(["not-a-track"], features=small_test.features)


def test_score_is_smg_miou(tiny_fitted, small_train):
    X = small_train.frame
    assert tiny_fitted.score(X) == pytest.approx(get_scorer("miou")(tiny_fitted, X))


def test_same_seed_same_predictions_and_different_seed_differs(small_train):
    X = small_train.frame
    a = MGSVGrounder(features=small_train.features, **TINY).fit(X)
    b = MGSVGrounder(features=small_train.features, **TINY).fit(X)
    pa, pb = a.predict(X), b.predict(X)
    pd.testing.assert_frame_equal(pa, pb)
    c = MGSVGrounder(features=small_train.features, **{**TINY, "random_state": 1}).fit(X)
    assert not np.allclose(pa["start"], c.predict(X)["start"])


def test_fit_leaves_global_torch_state_alone(small_train):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    MGSVGrounder(features=small_train.features, **{**TINY, "max_epochs": 1}).fit(small_train.frame)
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == threads


def test_joblib_round_trip_gives_identical_predictions(tiny_fitted, small_train):
    buffer = io.BytesIO()
    joblib.dump(tiny_fitted, buffer)
    buffer.seek(0)
    again = joblib.load(buffer)
    X = small_train.frame.iloc[:20]
    pd.testing.assert_frame_equal(again.predict(X), tiny_fitted.predict(X))


def test_save_and_load_without_pickle(tiny_fitted, small_train, tmp_path):
    tiny_fitted.save(tmp_path / "model")
    names = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert names == ["catalogue.npz", "config.json", "manifest.json", "weights.npz"]
    loaded = MGSVGrounder.load(tmp_path / "model", features=small_train.features)
    X = small_train.frame.iloc[:20]
    pd.testing.assert_frame_equal(loaded.predict(X), tiny_fitted.predict(X))
    pd.testing.assert_frame_equal(
        loaded.predict(X.drop(columns="music_id")), tiny_fitted.predict(X.drop(columns="music_id"))
    )
    assert loaded.get_params()["d_model"] == 32 and loaded.history_ == tiny_fitted.history_
    with np.load(tmp_path / "model" / "weights.npz", allow_pickle=False) as w:
        assert all(w[k].dtype != object for k in w.files)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        tiny_fitted.save(tmp_path / "model")


def test_tampered_saved_model_is_refused(tiny_fitted, tmp_path):
    tiny_fitted.save(tmp_path / "model")
    weights = tmp_path / "model" / "weights.npz"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="checksum mismatch.*weights.npz"):
        MGSVGrounder.load(tmp_path / "model")
    with pytest.raises(FileNotFoundError, match="no saved MGSVGrounder"):
        MGSVGrounder.load(tmp_path)


def test_unfitted_and_bad_parameters_fail_clearly(small_train):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        MGSVGrounder(features=small_train.features).predict(small_train.frame)
    bad = MGSVGrounder(features=small_train.features, lr=-1, early_stopping_metric="acc")
    with pytest.raises(ValueError, match="'lr' parameter.*\n.*'early_stopping_metric'"):
        bad.fit(small_train.frame)
    with pytest.raises(ValueError, match="d_model must be divisible by n_heads"):
        MGSVGrounder(features=small_train.features, d_model=30, n_heads=4).fit(small_train.frame)
    with pytest.raises(ValueError, match="no feature source"):
        MGSVGrounder().fit(small_train.frame)


def test_verbose_shows_progress_and_logs_epochs(small_train, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="mgsv_sk"):
        MGSVGrounder(features=small_train.features, **{**TINY, "max_epochs": 1, "verbose": 1}).fit(
            small_train.frame
        )
    assert "epoch 1" in capsys.readouterr().err
    assert any("epoch 1:" in r.getMessage() for r in caplog.records)


def _interrupt_after(monkeypatch, n_batches):
    import mgsv_sk.train._training as training

    real = training.collate
    calls = {"n": 0}

    def collate(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > n_batches:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "collate", collate)


def test_interrupted_fit_keeps_the_best_weights_so_far(small_train, monkeypatch):
    from sklearn.exceptions import NotFittedError

    est = MGSVGrounder(features=small_train.features, **{**TINY, "max_epochs": 5})
    _interrupt_after(monkeypatch, 5)  # about four batches an epoch: stops in epoch 2
    with pytest.warns(RuntimeWarning, match="interrupted"):
        est.fit(small_train.frame)
    assert est.stopped_ == "interrupted" and est.n_epochs_ == 1
    assert est.predict(small_train.frame.iloc[:3]).notna().all().all()
    fresh = MGSVGrounder(features=small_train.features, **TINY)
    _interrupt_after(monkeypatch, 1)  # still in epoch 1: nothing to keep
    with pytest.raises(KeyboardInterrupt):
        fresh.fit(small_train.frame)
    with pytest.raises(NotFittedError):
        fresh.predict(small_train.frame)


def test_predictions_do_not_depend_on_row_order_or_subset(tiny_fitted, small_train):
    X = small_train.frame.iloc[:30]
    full = tiny_fitted.predict(X)
    perm = np.random.default_rng(0).permutation(len(X))
    shuffled = tiny_fitted.predict(X.iloc[perm])
    pd.testing.assert_frame_equal(shuffled.loc[full.index], full, atol=1e-6)
    part = tiny_fitted.predict(X.iloc[5:9])
    pd.testing.assert_frame_equal(part, full.iloc[5:9], atol=1e-6)


def test_two_stage_search_parameter(tiny_model, small_train):
    X = small_train.frame.iloc[:10].drop(columns="music_id")
    full = tiny_model.decision_function(X)
    tiny_model.set_params(xpool_top_k=len(tiny_model.catalogue_ids_))
    np.testing.assert_allclose(tiny_model.decision_function(X), full, atol=1e-6)
    tiny_model.set_params(xpool_top_k=3)
    top = tiny_model.predict(X)
    assert (
        top["music_id"].to_numpy() == np.array(tiny_model.catalogue_ids_)[full.argmax(1)]
    ).mean() > 0.5


def test_validation_ranks_against_a_catalogue_sized_gallery(tiny_fitted, small_train):
    """The validation split's retrieval is measured against its tracks plus the training
    tracks as distractors (``validation_gallery="train"``), with the gallery size in the
    history; "held_out" ranks against the held-out tracks alone."""
    hist = pd.DataFrame(tiny_fitted.history_)
    n_tracks = small_train.frame["music_id"].nunique()
    assert (hist["val_gallery_tracks"] == n_tracks).all()
    assert {"val_R@1", "val_R@10", "val_MoR@1,0.5"} <= set(hist.columns)
    alone = MGSVGrounder(features=small_train.features, validation_gallery="held_out",
                         **{**TINY, "max_epochs": 1}).fit(small_train.frame)
    held_out = alone.history_[0]["val_gallery_tracks"]
    assert 1 <= held_out < n_tracks
    # a wider gallery can only push the true track down: recall falls or stays
    wide = MGSVGrounder(features=small_train.features, **{**TINY, "max_epochs": 1}).fit(
        small_train.frame)
    assert wide.history_[0]["val_R@10"] <= alone.history_[0]["val_R@10"]


def test_validation_gallery_takes_distractor_ids(small_train, small_test):
    from mgsv_sk.data._sources import InMemoryFeatures

    feats = InMemoryFeatures({**small_train.features._videos, **small_test.features._videos},
                             {**small_train.features._music, **small_test.features._music})
    extra = list(small_test.frame["music_id"].unique())
    est = MGSVGrounder(features=feats, validation_gallery=extra,
                       **{**TINY, "max_epochs": 1}).fit(small_train.frame)
    held_out = est.history_[0]["val_gallery_tracks"] - len(extra)
    assert 1 <= held_out < small_train.frame["music_id"].nunique()
    with pytest.raises(Exception, match="nope"):
        MGSVGrounder(features=feats, validation_gallery=["nope"], **TINY).fit(small_train.frame)


def test_eval_set_is_recorded_per_epoch_and_never_steers(small_train, small_test):
    # the record ranks with the weight in force during the fit (fixed here: "auto" chooses
    # another, on the validation split, after the last epoch)
    kw = {**TINY, "max_epochs": 2, "patience": 5, "moment_weight": 0.05}
    plain = MGSVGrounder(features=small_train.features, **kw).fit(small_train.frame)
    est = MGSVGrounder(features=small_train.features, **kw).fit(
        small_train.frame, eval_set=(small_test.frame, small_test.features))
    hist = pd.DataFrame(est.history_)
    assert (hist["eval0_gallery_tracks"] == small_test.frame["music_id"].nunique()).all()
    assert {"eval0_R@1", "eval0_mIoU", "eval0_MoR@1,0.5"} <= set(hist.columns)
    # the record does not change training: same weights, same validation
    assert est.best_epoch_ == plain.best_epoch_
    assert np.allclose(hist["val_R@1"], pd.DataFrame(plain.history_)["val_R@1"])
    final = est.history_[-1]
    report = evaluate(est, small_test.frame, features=small_test.features)
    if est.best_epoch_ == est.n_epochs_:  # the kept weights are the last epoch's
        assert report["R@1"] == pytest.approx(final["eval0_R@1"], abs=1e-9)


def test_early_stopping_stops_on_a_planted_decline(small_train, monkeypatch):
    """Validation R@1 rises to a plateau of two epochs, then falls: the fit stops
    ``patience`` epochs after the plateau and keeps the weights of its second epoch (the
    rule judges two-epoch means: 0.2, 0.3, 0.5, 0.6, 0.45, 0.25)."""
    from mgsv_sk.train import _training

    curve = iter([0.2, 0.4, 0.6, 0.6, 0.3, 0.2, 0.15, 0.1, 0.05, 0.0])
    real = _training.validation_report
    kept: dict[int, float] = {}

    def planted(model, split, *args, **kwargs):
        report = real(model, split, *args, **kwargs)
        report["R@1"] = next(curve)
        kept[len(kept) + 1] = float(next(iter(model.parameters())).detach().sum())
        return report

    monkeypatch.setattr(_training, "validation_report", planted)
    est = MGSVGrounder(features=small_train.features, early_stopping_metric="r1",
                       **{**TINY, "max_epochs": 10, "patience": 2}).fit(small_train.frame)
    assert est.best_epoch_ == 4 and est.n_epochs_ == 6 and est.stopped_ == "converged"
    assert float(next(iter(est.model_.parameters())).detach().sum()) == pytest.approx(kept[4])


def test_early_stopping_keeps_the_latest_near_tie():
    """Within the tolerance of the best two-epoch mean the latest epoch is kept (the more
    trained average); a dip beyond it is not kept, and only a real gain resets patience."""
    from mgsv_sk.train._training import EarlyStopping

    stopping = EarlyStopping(patience=3, tolerance=0.01)
    kept = [stopping.update(v) for v in [0.5, 0.7, 0.7, 0.695, 0.66, 0.69]]
    # means 0.5, 0.6, 0.7, 0.6975, 0.6775, 0.675: epoch 4 is a near tie, 5 and 6 are not
    assert kept == [True, True, True, True, False, False]
    assert stopping.best_epoch == 4 and stopping.best_score == pytest.approx(0.7)
    assert stopping.exhausted  # epochs 4-6 did not improve the best
    exact = EarlyStopping(patience=3)  # no tolerance: the best itself, the latest of ties
    for v in [0.5, 0.7, 0.7, 0.695]:
        exact.update(v)
    assert exact.best_epoch == 3


def test_early_stopping_is_not_fooled_by_one_noisy_epoch():
    """A one-epoch spike of the validation metric (noise on a small split) does not end the
    fit while the metric keeps rising on the two-epoch mean."""
    from mgsv_sk.train._training import EarlyStopping

    stopping = EarlyStopping(patience=2)
    kept, exhausted = [], []
    for value in [0.5, 0.9, 0.6, 0.7, 0.85, 0.86, 0.8, 0.7, 0.6]:
        kept.append(stopping.update(value))
        exhausted.append(stopping.exhausted)
    # means: 0.5, 0.7, 0.75, 0.65, 0.775, 0.855, 0.83, 0.75 -> the best ends at epoch 6;
    # judged on single epochs, the spike at epoch 2 would have ended the fit at epoch 4
    assert stopping.best_epoch == 6 and kept[5] and not any(kept[6:])
    assert exhausted.index(True) + 1 == 8


def test_a_small_fit_beats_the_trivial_predictor_on_unseen_tracks():
    # Issue 19's floor: retrieval and grounding both learn something that carries over to
    # tracks never seen in training (100 test videos on 100 new tracks).
    from mgsv_sk import TrivialGrounder

    train = make_synthetic_mgsv(400, 40, random_state=0)
    test = make_synthetic_mgsv(100, 100, random_state=1, split="test")
    model = MGSVGrounder(features=train.features, d_model=64, n_heads=4, encoder_layers=1,
                         decoder_layers=2, batch_size=32, lr=3e-3, max_epochs=8, patience=8,
                         n_threads=1, random_state=0).fit(train.frame)
    ours = evaluate(model, test.frame, features=test.features)
    trivial = evaluate(TrivialGrounder().fit(train.frame), test.frame, features=test.features)
    assert ours["R@1"] >= 5 * max(trivial["R@1"], 0.01)  # chance: 1 / 100
    assert ours["mIoU"] >= trivial["mIoU"] + 0.03
