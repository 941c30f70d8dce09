"""Annotation frames: reading, id types, and one error listing every problem."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from mgsv_sk import AnnotationError, read_annotations, validate_annotations
from mgsv_sk.data._schema import ANNOTATION_COLUMNS, FIT_COLUMNS, video_durations


def test_release_csv_round_trip_keeps_ids_as_strings(release_tree):
    frame = read_annotations(release_tree.csv_path)
    assert list(frame.columns) == list(ANNOTATION_COLUMNS)
    assert all(isinstance(v, str) for v in frame["video_id"])
    assert frame["video_id"].tolist() == release_tree.frame["video_id"].tolist()


def test_integer_ids_in_csv_become_exact_strings():
    csv = io.StringIO(
        "video_id,music_id,music_start,music_end,music_total_duration\n"
        "112712471153,42,0,10,60\n"
    )
    frame = read_annotations(csv)
    assert frame.loc[0, "video_id"] == "112712471153"
    assert frame.loc[0, "music_id"] == "42"


def test_integer_and_float_id_columns_of_a_frame():
    df = pd.DataFrame({"video_id": [112712471153.0], "music_id": [7],
                       "music_start": [0.0], "music_end": [5.0], "music_total_duration": [9.0]})
    out = validate_annotations(df)
    assert out.loc[0, "video_id"] == "112712471153" and out.loc[0, "music_id"] == "7"


def test_every_problem_is_listed_in_one_error(small_train):
    df = small_train.frame.copy()
    df = df.drop(columns=["music_total_duration"]).rename(columns={"music_start": "music_strat"})
    with pytest.raises(AnnotationError, match="missing column 'music_start'.*misspelt") as err:
        validate_annotations(df, FIT_COLUMNS)
    assert len(err.value.problems) == 2
    assert "music_total_duration" in str(err.value)


def test_bad_times_are_gathered(small_train):
    df = small_train.frame.copy()
    df.loc[0, "music_start"] = np.nan
    df.loc[1, "music_end"] = -3.0
    df.loc[2, "music_end"] = df.loc[2, "music_start"]  # zero length
    df.loc[3, "music_end"] = df.loc[3, "music_total_duration"] + 30  # past the track
    with pytest.raises(AnnotationError) as err:
        validate_annotations(df)
    text = str(err.value)
    assert "NaN/inf" in text and "negative" in text
    assert "music_end <= music_start" in text and "end after their track" in text
    assert len(err.value.problems) == 4


def test_conflicting_duplicates_rejected_exact_duplicates_dropped(small_train):
    df = small_train.frame.copy()
    exact = pd.concat([df, df.iloc[[0]]], ignore_index=True)
    assert len(validate_annotations(exact)) == len(df)
    conflict = df.copy()
    conflict.loc[1, "video_id"] = conflict.loc[0, "video_id"]
    with pytest.raises(AnnotationError, match="video_id.*disagree"):
        validate_annotations(conflict)


def test_empty_frame_and_wrong_type():
    with pytest.raises(AnnotationError, match="no rows"):
        validate_annotations(pd.DataFrame(columns=list(FIT_COLUMNS)))
    with pytest.raises(TypeError, match="DataFrame"):
        validate_annotations(np.zeros((3, 5)))  # type: ignore[arg-type]


def test_non_numeric_times_and_missing_file(tmp_path):
    df = pd.DataFrame({"video_id": ["a"], "music_id": ["m"], "music_start": ["zero"],
                       "music_end": [4.0], "music_total_duration": [10.0]})
    with pytest.raises(AnnotationError, match="non-numeric"):
        validate_annotations(df)
    with pytest.raises(FileNotFoundError, match="annotation CSV not found"):
        read_annotations(tmp_path / "nope.csv")


def test_video_durations_fallbacks(small_train):
    df = small_train.frame
    np.testing.assert_allclose(video_durations(df), df["video_segment_duration"])
    np.testing.assert_allclose(
        video_durations(df.drop(columns="video_segment_duration")),
        df["video_end"] - df["video_start"],
    )
