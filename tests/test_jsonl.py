"""JSON lines output: format, round trip, and values equal to predict / rank."""

from __future__ import annotations

import io
import json
import math
import os

import numpy as np
import pandas as pd
import pytest

from mgsv_sk.data.jsonl import (
    JSONL_KEYS,
    predictions_to_jsonl,
    predictions_to_records,
    read_jsonl,
    records_to_frame,
)


@pytest.fixture(scope="module")
def queries(small_train):
    return small_train.frame.iloc[:12].reset_index(drop=True)


@pytest.fixture(scope="module")
def ranked(tiny_fitted, queries):
    return tiny_fitted.rank(queries.drop(columns="music_id"), k=4)


def test_rank_round_trip_is_exact(ranked, tmp_path):
    path = tmp_path / "top4.jsonl"
    assert predictions_to_jsonl(ranked, path) == 12
    back = records_to_frame(read_jsonl(path))
    want = ranked.astype({"rank": np.int64, "score": np.float64})  # float32 scores: exact in JSON
    pd.testing.assert_frame_equal(back, want, check_exact=True)
    assert [p.name for p in tmp_path.iterdir()] == ["top4.jsonl"]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0o600


def test_lines_follow_the_moment_retrieval_convention(ranked, queries):
    buf = io.StringIO()
    predictions_to_jsonl(ranked, buf)
    lines = buf.getvalue().splitlines()
    assert len(lines) == len(queries)
    for line, (_, video) in zip(lines, queries.iterrows()):
        obj = json.loads(line)
        assert tuple(obj) == JSONL_KEYS
        assert obj["video_id"] == video["video_id"] and isinstance(obj["video_id"], str)
        rows = ranked[ranked.video_id == video["video_id"]].sort_values("rank")
        assert obj["pred_music_ids"] == rows["music_id"].tolist()
        assert all(isinstance(m, str) for m in obj["pred_music_ids"])
        assert obj["pred_music_scores"] == rows["score"].tolist()
        assert obj["pred_music_scores"] == sorted(obj["pred_music_scores"], reverse=True)
        windows = [[[s, e, c]] for s, e, c in
                   rows[["start", "end", "moment_score"]].itertuples(index=False)]
        assert obj["pred_windows_by_music"] == windows
        assert obj["pred_relevant_windows"] == windows[0]  # the top-1 track's moment
        for start, end, score in obj["pred_relevant_windows"]:
            assert all(type(x) is float and math.isfinite(x) for x in (start, end, score))
            assert 0.0 <= start < end


@pytest.mark.parametrize("mode", ["smg", "msg"])
def test_predict_frame_values(tiny_fitted, queries, mode):
    X = queries if mode == "smg" else queries.drop(columns="music_id")
    pred = tiny_fitted.predict(X)
    records = predictions_to_records(pred, video_ids=queries["video_id"])
    assert [r["video_id"] for r in records] == queries["video_id"].tolist()
    for rec, (_, row) in zip(records, pred.iterrows()):
        assert rec["pred_music_ids"] == [row["music_id"]]
        assert rec["pred_music_scores"] == [row["score"]]
        assert rec["pred_relevant_windows"] == [[row["start"], row["end"], row["moment_score"]]]
    if mode == "smg":  # SmG grounds on the given track
        assert [r["pred_music_ids"][0] for r in records] == queries["music_id"].tolist()
    back = records_to_frame(records)
    np.testing.assert_array_equal(back[["start", "end", "score", "moment_score"]].to_numpy(),
                                  pred[["start", "end", "score", "moment_score"]].to_numpy())
    assert (back["rank"] == 1).all()


def test_predict_frame_with_a_video_id_column(tiny_fitted, queries):
    pred = tiny_fitted.predict(queries)
    pred.insert(0, "video_id", queries["video_id"].to_numpy())
    assert predictions_to_records(pred) == predictions_to_records(
        pred.drop(columns="video_id"), video_ids=queries["video_id"])


def test_records_keep_the_order_of_the_videos(ranked):
    shuffled = ranked.sample(frac=1.0, random_state=0)
    first_seen = list(dict.fromkeys(shuffled["video_id"]))
    records = predictions_to_records(shuffled)
    assert [r["video_id"] for r in records] == first_seen
    assert all(r["pred_music_scores"] == sorted(r["pred_music_scores"], reverse=True)
               for r in records)


def _pred(**overrides):
    data = {"music_id": ["m1", "m2"], "start": [0.0, 5.0], "end": [10.0, 20.0],
            "score": [0.5, 0.25], "moment_score": [0.9, 0.8]}
    data.update(overrides)
    return pd.DataFrame(data)


def test_integer_ids_become_strings():
    rec = predictions_to_records(_pred(music_id=[11, 12]), video_ids=[1, 2])
    assert rec[0]["video_id"] == "1" and rec[1]["pred_music_ids"] == ["12"]


def test_non_finite_values_are_refused_and_nothing_is_written(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("old\n")
    with pytest.raises(ValueError, match=r"score of video '2' is nan"):
        predictions_to_jsonl(_pred(score=[0.5, np.nan]), path, video_ids=["1", "2"])
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["p.jsonl"]


def test_predict_frame_needs_video_ids():
    with pytest.raises(ValueError, match="video_ids="):
        predictions_to_records(_pred())
    with pytest.raises(ValueError, match="2 prediction rows"):
        predictions_to_records(_pred(), video_ids=["a"])
    with pytest.raises(ValueError, match="lack column"):
        predictions_to_records(_pred().drop(columns="moment_score"), video_ids=["a", "b"])
    with pytest.raises(TypeError, match="DataFrame"):
        predictions_to_records([1, 2])


def test_writing_into_a_missing_folder_fails_cleanly(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        predictions_to_jsonl(_pred(), tmp_path / "nope" / "p.jsonl", video_ids=["a", "b"])


def test_read_jsonl_reports_the_bad_line(tmp_path):
    good = json.dumps(predictions_to_records(_pred(), video_ids=["a", "b"])[0])
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n\n{not json\n")
    with pytest.raises(ValueError, match="line 3: not valid JSON"):
        read_jsonl(path)
    path.write_text(good + "\n" + json.dumps({"video_id": "x"}) + "\n")
    with pytest.raises(ValueError, match="line 2: missing key"):
        read_jsonl(path)
    with pytest.raises(FileNotFoundError):
        read_jsonl(tmp_path / "absent.jsonl")


def test_records_without_per_track_windows():
    """Files from other tools may carry only pred_relevant_windows (for the first track)."""
    rec = {"video_id": "v", "pred_music_ids": ["a", "b"], "pred_music_scores": [0.9, 0.1],
           "pred_relevant_windows": [[1.0, 2.0, 0.5]]}
    frame = records_to_frame(read_jsonl(io.StringIO(json.dumps(rec) + "\n")))
    assert frame["start"].tolist()[0] == 1.0 and math.isnan(frame["start"].tolist()[1])
