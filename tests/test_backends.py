"""One behavioural suite, run against both backends: the torch MGSVGrounder and the
onnxruntime OnnxGrounder serving its exported bundle. Both are the core's BaseGrounder
(predict / rank / decision_function / score / set_catalogue exist once), so a behaviour
holds for both or for neither. Numerical parity of the two lives in test_export.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mgsv_sk.data.features import FeatureError
from mgsv_sk.grounding import PREDICTION_COLUMNS, RANK_COLUMNS
from mgsv_sk.train._fusion import WEIGHTS


@pytest.fixture(scope="module")
def bundle(tiny_fitted, tmp_path_factory):
    from mgsv_sk.export.to_onnx import export_onnx

    return export_onnx(tiny_fitted, tmp_path_factory.mktemp("backends") / "bundle")


@pytest.mark.parametrize("mode", ["smg", "msg"])
def test_predict_answers_every_row_in_order(grounder, small_train, mode):
    X = small_train.frame.iloc[[3, 4, 3, 3, 5]].set_index(pd.Index([7, 8, 7, 9, 9]))
    X = X if mode == "smg" else X.drop(columns="music_id")
    out = grounder.predict(X)
    assert list(out.columns) == list(PREDICTION_COLUMNS) and out.index.equals(X.index)
    assert out.iloc[0].equals(out.iloc[2]) and out.iloc[0].equals(out.iloc[3])
    assert ((out["start"] >= 0) & (out["end"] > out["start"])).all()
    if mode == "smg":
        assert out["music_id"].tolist() == X["music_id"].tolist()
    else:
        assert set(out["music_id"]) <= set(grounder.catalogue_ids_)


def test_a_repeated_pair_is_grounded_once(grounder, small_train, monkeypatch):
    """Rows that ask the same (video, track) pair share one computation, so they get the
    same answer to the bit whatever position a backend's kernels give each copy."""
    X = small_train.frame.iloc[[3, 4, 3, 3, 5]]
    pairs: list[int] = []
    ground = grounder._ground

    def counted(videos, video_rows, *args):
        pairs.append(len(video_rows))
        return ground(videos, video_rows, *args)

    monkeypatch.setattr(grounder, "_ground", counted)
    out = grounder.predict(X)  # SmG: 5 rows, 3 distinct pairs
    assert pairs == [3]
    assert out.iloc[0].equals(out.iloc[2]) and out.iloc[0].equals(out.iloc[3])
    pairs.clear()
    grounder.rank(X.drop(columns="music_id"), k=4, moment_weight=0.0)
    assert pairs == [3 * 4]  # each distinct video's 4 candidates, once


def test_rank_shape_order_and_windows(grounder, small_train):
    X = small_train.frame.iloc[:6].drop(columns="music_id")
    out = grounder.rank(X, k=4, moments_per_track=2)
    assert list(out.columns) == [*RANK_COLUMNS, "windows"] and len(out) == 24
    assert out["rank"].tolist() == [1, 2, 3, 4] * 6
    assert (out.groupby("video_id", sort=False)["score"].diff().dropna() <= 0).all()
    assert all(1 <= len(w) <= 2 for w in out["windows"])
    assert len(grounder.rank(X.iloc[:1], k=1000)) == len(grounder.catalogue_ids_)


def test_rank_rerank_by_moment_score(grounder, small_train):
    X = small_train.frame.iloc[:6].drop(columns="music_id")
    plain = grounder.rank(X, k=8, moment_weight=0.0)
    mixed = grounder.rank(X, k=3, moment_weight=0.5, rerank_depth=8)
    assert len(mixed) == 18 and mixed["rank"].tolist() == [1, 2, 3] * 6
    p = plain["moment_score"].clip(1e-6, 1 - 1e-6)
    plain = plain.assign(combined=plain["score"] + 0.5 * np.log(p / (1 - p)))
    for vid, rows in mixed.groupby("video_id", sort=False):
        cand = plain[plain["video_id"] == vid].sort_values("combined", ascending=False,
                                                              kind="stable")
        assert rows["music_id"].tolist() == cand["music_id"].tolist()[:3]
        # the score is what the rows are ordered by; each track keeps its own moment
        assert np.allclose(rows["score"], cand["combined"].iloc[:3])
        assert np.allclose(rows["start"], cand["start"].iloc[:3])


def test_default_ranking_is_the_grounders_rerank_everywhere(grounder, small_train, small_test):
    """rank, MsG predict and decision_function order by one rule: the grounder's own
    re-ranking (a fitted window-head model re-ranks by its weight, and so does its bundle)."""
    weight, depth = grounder._rerank()  # "auto": the weight the fit chose on validation
    assert depth == 10 and weight in WEIGHTS
    if weight == 0:  # this fixture's fit chose not to re-rank: give the grounder a weight
        if hasattr(grounder, "moment_weight_"):
            grounder.moment_weight_ = 2.0  # as a fit that chose 2
        else:
            grounder.moment_weight = 2.0  # the bundle's weight, as exported
        assert grounder._rerank()[0] == 2.0
    X = small_test.frame.iloc[:12].drop(columns="music_id")
    feats = small_test.features
    gallery = list(small_test.frame["music_id"].unique())
    grounder.set_catalogue(gallery, features=feats)
    ranked = grounder.rank(X, k=5, features=feats)
    assert not ranked.equals(grounder.rank(X, k=5, features=feats, moment_weight=0.0))
    table = grounder.decision_function(X, features=feats, music_ids=gallery)
    order = np.argsort(-table, axis=1, kind="stable")[:, :5]
    assert ranked["music_id"].tolist() == [gallery[j] for j in order.ravel()]
    np.testing.assert_allclose(ranked["score"], np.take_along_axis(table, order, 1).ravel(),
                               rtol=1e-5, atol=1e-5)
    best = grounder.predict(X, features=feats)
    assert best["music_id"].tolist() == ranked[ranked["rank"] == 1]["music_id"].tolist()
    # every track outside the re-ranked candidates ranks after them, in retrieval order
    plain = grounder.decision_function(X, features=feats, music_ids=gallery, moment_weight=0)
    depth = grounder._rerank()[1]
    for row, plain_row in zip(table, plain):
        top = set(np.argsort(-plain_row, kind="stable")[:depth])
        rest = [j for j in np.argsort(-plain_row, kind="stable") if j not in top]
        assert min(row[list(top)]) > max(row[rest])
        assert list(np.argsort(-row[rest], kind="stable")) == list(range(len(rest)))


@pytest.mark.parametrize("bad", [{"moment_weight": -1.0}, {"moment_weight": float("nan")},
                                 {"moment_weight": True}, {"rerank_depth": 0},
                                 {"rerank_depth": 2.5}])
def test_rank_refuses_bad_rerank_settings(grounder, small_train, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        grounder.rank(small_train.frame.iloc[:2].drop(columns="music_id"), k=2, **bad)


def test_rank_frames_is_rank_on_features_in_memory(grounder, small_train):
    """The server's array path answers exactly the rows of ``rank`` (same tracks, order,
    scores and moments), without DataFrames."""
    X = small_train.frame.iloc[[0, 5, 9]].drop(columns="music_id")
    frames = [small_train.features.video(v) for v in X["video_id"]]
    seconds = X["video_segment_duration"].to_numpy()
    ids = [f"v{i}" for i in range(3)]
    query = pd.DataFrame({"video_id": ids, "video_segment_duration": seconds})
    table = grounder.rank(query, k=5, features=(dict(zip(ids, frames)), {}),
                          moments_per_track=2)
    top = grounder.rank_frames(frames, seconds, k=5, moments_per_track=2)
    assert top.ranks.tolist() == table["rank"].tolist()
    assert top.music_ids == table["music_id"].tolist()
    np.testing.assert_array_equal(top.score, table["score"].to_numpy())
    np.testing.assert_array_equal(top.start[:, 0], table["start"].to_numpy())
    np.testing.assert_array_equal(top.moment[:, 0], table["moment_score"].to_numpy())
    windows = [[[a, b, c] for a, b, c in zip(s, e, m) if np.isfinite(a)]
               for s, e, m in zip(top.start, top.end, top.moment)]
    assert windows == [[list(w) for w in row] for row in table["windows"]]


@pytest.mark.parametrize("seconds", [[30.0], [30.0, float("nan")], [30.0, 0.0], [30.0, -2.0]])
def test_rank_frames_refuses_bad_lengths(grounder, small_train, seconds):
    frames = [small_train.features.video(v) for v in small_train.frame["video_id"][:2]]
    with pytest.raises(ValueError, match="seconds must hold one finite, positive length"):
        grounder.rank_frames(frames, seconds, k=2)


def test_a_video_longer_than_the_music_asks_for_the_longest_moment(grounder, small_train):
    """A length past the 240 s of music the features cover (even past float32's range) is
    a moment as long as the music: the answer at 240 s, never an overflow blamed on the
    features; a length of 0 or less is refused, naming the row."""
    X = small_train.frame.iloc[:2].drop(columns="music_id")
    at_max = grounder.rank(X.assign(video_segment_duration=240.0), k=3)
    for huge in (1e6, 1e39, 1e300):
        pd.testing.assert_frame_equal(
            grounder.rank(X.assign(video_segment_duration=huge), k=3), at_max)
    with pytest.raises(ValueError, match=r"no length \(video_segment_duration <= 0.*rows 1"):
        grounder.rank(X.assign(video_segment_duration=[12.0, 0.0]), k=3)


@pytest.mark.parametrize("k", [0, -1, True, 2.0, "3"])
def test_rank_refuses_a_bad_k(grounder, small_train, k):
    with pytest.raises(ValueError, match="k must be a positive integer"):
        grounder.rank(small_train.frame.iloc[:2], k=k)


def test_decision_function_columns(grounder, small_train):
    X = small_train.frame.iloc[:5]
    table = grounder.decision_function(X, moment_weight=0)  # plain retrieval scores
    assert table.shape == (5, len(grounder.catalogue_ids_))
    gallery = list(reversed(grounder.catalogue_ids_[:4]))
    sub = grounder.decision_function(X, music_ids=gallery, moment_weight=0)
    cols = [grounder.catalogue_ids_.index(m) for m in gallery]
    np.testing.assert_allclose(sub, table[:, cols], atol=1e-5)
    # re-ranked, the candidates are the gallery's own best tracks: 4 of 4 here
    mixed = grounder.decision_function(X, music_ids=gallery)
    pairs = grounder.predict(X.iloc[np.repeat(np.arange(5), 4)].drop(columns="music_id")
                             .assign(music_id=gallery * 5))
    np.testing.assert_allclose(mixed.ravel(), pairs["score"], rtol=1e-5, atol=1e-5)


def test_set_catalogue_restricts_msg(grounder, small_train):
    ids = grounder.catalogue_ids_[:3]
    grounder.set_catalogue(ids)
    assert grounder.catalogue_ids_ == ids
    out = grounder.predict(small_train.frame.iloc[:8].drop(columns="music_id"))
    assert set(out["music_id"]) <= set(ids)
    with pytest.raises(ValueError, match="at least one"):
        grounder.set_catalogue([])


def test_score_is_smg_miou(grounder, small_train):
    value = grounder.score(small_train.frame.iloc[:20])
    assert isinstance(value, float) and 0.0 <= value <= 1.0


def test_the_same_clear_errors(grounder, small_train):
    X = small_train.frame.iloc[:3]
    with pytest.raises(TypeError, match="DataFrame"):
        grounder.predict(X.to_dict())
    with pytest.raises(ValueError, match="video_id"):
        grounder.predict(X.drop(columns="video_id"))
    with pytest.raises(FeatureError, match=r"no features for 1 video\(s\) \['ghost'\]"):
        grounder.predict(X.assign(video_id=["ghost", *X["video_id"].iloc[1:]]))
    with pytest.raises(FeatureError, match=r"no features for 1 track\(s\) \['ghost'\]"):
        grounder.predict(X.assign(music_id=["ghost", *X["music_id"].iloc[1:]]))
    with pytest.raises(ValueError, match="moments_per_track"):
        grounder.predict(X, moments_per_track=0)
    grounder.features = None  # a copy per test
    with pytest.raises(ValueError, match="no features given"):
        grounder.predict(X)


def test_a_store_path_is_opened_once_and_again_when_rewritten(grounder, small_train, tmp_path):
    from mgsv_sk import pack_features

    X = small_train.frame.iloc[:4]
    path = tmp_path / "store"
    pack_features(small_train.features, path, annotations=X)
    first = grounder.predict(X, features=str(path))
    opened = grounder._source(str(path))
    assert grounder._source(path) is opened  # the same store: not read again
    pack_features(small_train.features, path, annotations=small_train.frame.iloc[:6],
                  overwrite=True)  # written again (atomically): a new marker file
    again = grounder._source(str(path))
    assert again is not opened and len(again.video_ids()) == 6
    pd.testing.assert_frame_equal(grounder.predict(X, features=str(path)), first)
