"""The MGSV-EC data: the task's constants and span geometry (``spans``), the annotation
schema and its readers (``_schema``, ``_readers``), feature sources (``features``: the
release's ``.pt`` tree, the packed store, arrays; with ``_sources``, ``_tree``, ``packed``),
synthetic worlds (``synthetic``) and predictions as JSON lines (``jsonl``).

numpy, pandas and the standard library (torch only lazily, to read ``.pt`` files); imports
:mod:`mgsv_sk.files` and nothing else of the package. Other sub-packages import the names
below from ``mgsv_sk.data`` (or its public modules), never from its private modules.
"""

from mgsv_sk.data._arrays import as_array, plain
from mgsv_sk.data._readers import id_list, read_annotations, read_id_list
from mgsv_sk.data._schema import (
    FIT_COLUMNS,
    GROUND_TRUTH_COLUMNS,
    MAX_ID_LENGTH,
    PREDICT_COLUMNS,
    check_moments_on_features,
    check_trainable_moments,
    has_video_durations,
    validate_annotations,
    video_durations,
)
from mgsv_sk.data._sources import check_id
from mgsv_sk.data._tree import (
    KUAI_FEATURES,
    MUSIC_FEATURES,
    MUSIC_MASKS,
    VIDEO_FEATURES,
    VIDEO_MASKS,
)
from mgsv_sk.data.features import (
    NO_FEATURES,
    FeatureError,
    FeatureSource,
    FeatureTree,
    InMemoryFeatures,
    MissingFeatureError,
    PackedFeatures,
    as_feature_source,
    pack_features,
    progress_bar,
    require_finite,
)
from mgsv_sk.data.jsonl import predictions_to_jsonl, predictions_to_records, write_text_atomic
from mgsv_sk.data.spans import (
    MAX_MUSIC_SECONDS,
    MAX_MUSIC_SNIPPETS,
    MAX_VIDEO_FRAMES,
    SNIPPET_HOP_SECONDS,
    temporal_iou,
)
from mgsv_sk.data.synthetic import make_synthetic_mgsv

__all__ = ["FIT_COLUMNS", "GROUND_TRUTH_COLUMNS", "KUAI_FEATURES", "MAX_ID_LENGTH",
           "MAX_MUSIC_SECONDS", "MAX_MUSIC_SNIPPETS", "MAX_VIDEO_FRAMES", "MUSIC_FEATURES",
           "MUSIC_MASKS", "NO_FEATURES", "PREDICT_COLUMNS", "SNIPPET_HOP_SECONDS",
           "VIDEO_FEATURES", "VIDEO_MASKS", "FeatureError", "FeatureSource", "FeatureTree",
           "InMemoryFeatures", "MissingFeatureError", "PackedFeatures", "as_array",
           "as_feature_source", "check_id", "check_moments_on_features",
           "check_trainable_moments", "has_video_durations", "id_list", "make_synthetic_mgsv",
           "pack_features", "plain", "predictions_to_jsonl", "predictions_to_records",
           "progress_bar", "read_annotations", "read_id_list", "require_finite", "temporal_iou",
           "validate_annotations", "video_durations", "write_text_atomic"]
