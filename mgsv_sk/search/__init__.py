"""Catalogue search, whatever the storage: track ids (``tracks``), the stored rows of a
catalogue (``parts``, ragged arrays in ``ragged``), the catalogue (``catalogue``), the
dual / X-Pool / two-stage search over it (``retrieval``, with the ``Scorer`` protocol each
backend implements, ``protocols``), the ANN first stage (``ann``), compact snippet rows
(``compact``), shards on Dask workers (``sharded``), top-k selection (``topk``) and the
one ranking rule that re-scores the best candidates by their moment (``rerank``).

numpy only (FAISS and Dask when asked for); imports :mod:`mgsv_sk.data` and
:mod:`mgsv_sk.files`, never torch. Other sub-packages import the names below from
``mgsv_sk.search``.
"""

from mgsv_sk.search.ann import (
    EXACT_MAX_TRACKS,
    INDEX_KINDS,
    AnnIndex,
    AnnIndexError,
    AnnParams,
    build_index,
    load_index,
    resolve_kind,
)
from mgsv_sk.search.catalogue import Catalogue
from mgsv_sk.search.compact import (
    SCORE_TOLERANCE,
    STATE_DTYPES,
    CompactRows,
    CompactWriter,
    RowFile,
    bytes_per_row,
    check_state_dtype,
    encode_rows,
    open_compact,
)
from mgsv_sk.search.parts import Chunk, NpyRows, Part, Rows
from mgsv_sk.search.protocols import Scorer, Shards, SnippetRows
from mgsv_sk.search.ragged import pad, sorted_batches
from mgsv_sk.search.rerank import (
    RERANK_MARGIN,
    check_rerank,
    combined_scores,
    moment_logit,
    rerank_count,
    rerank_table,
    reranked,
)
from mgsv_sk.search.retrieval import (
    TWO_STAGE_MARGIN,
    check_positive,
    pair_scores,
    retrieval_scores,
)
from mgsv_sk.search.sharded import ShardedCatalogue
from mgsv_sk.search.topk import top_k_indices, top_k_rows
from mgsv_sk.search.tracks import TrackIndex

__all__ = [
    "EXACT_MAX_TRACKS", "INDEX_KINDS", "RERANK_MARGIN", "SCORE_TOLERANCE", "STATE_DTYPES",
    "TWO_STAGE_MARGIN", "AnnIndex", "AnnIndexError", "AnnParams", "Catalogue", "Chunk",
    "CompactRows", "CompactWriter", "NpyRows", "Part", "RowFile", "Rows", "Scorer",
    "ShardedCatalogue", "Shards", "SnippetRows", "TrackIndex", "build_index",
    "bytes_per_row", "check_positive", "check_rerank", "check_state_dtype",
    "combined_scores", "encode_rows", "load_index", "moment_logit", "open_compact", "pad",
    "pair_scores", "rerank_count", "rerank_table", "reranked", "resolve_kind",
    "retrieval_scores", "sorted_batches", "top_k_indices", "top_k_rows",
]
