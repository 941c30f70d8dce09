"""MGSVGrounder: the MaDe model and a retrieval ranker behind the scikit-learn API."""

from __future__ import annotations

import copy
import inspect
import logging
import os
import warnings
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from sklearn.utils._param_validation import (
    Interval,
    StrOptions,
)
from sklearn.utils.validation import check_is_fitted

from mgsv_sk.data._schema import FIT_COLUMNS, check_trainable_moments
from mgsv_sk.data.features import FeatureSource, require_finite
from mgsv_sk.grounding.base import new_fit_token
from mgsv_sk.grounding.sklearn_base import GrounderEstimator
from mgsv_sk.infer.batched import ground_pairs, snippet_evidence, video_embeddings
from mgsv_sk.infer.catalogue import MusicCatalogue, TorchXPool, xpool_scorer
from mgsv_sk.infer.device import (
    MIXED_PRECISION,
    model_device,
    resolve_device,
    resolve_precision,
    torch_threads,
)
from mgsv_sk.nn.config import DETECTORS
from mgsv_sk.search.catalogue import Catalogue, pair_scores, retrieval_scores
from mgsv_sk.train._fitted import FittedState
from mgsv_sk.train._training import EARLY_STOPPING_METRICS, LR_SCHEDULES
from mgsv_sk.train.fitting import fit_grounder, prepare_fit

__all__ = ["MGSVGrounder"]

#: ``moment_weight="auto"`` with the window head (measured in ``benchmarks/accuracy.py``).
DEFAULT_MOMENT_WEIGHT = 0.05

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Videos:
    """The videos of one call: ids, unit-norm embeddings [n, D] and their source (the
    detector reads their frames again when grounding)."""

    ids: list[str]
    emb: np.ndarray
    source: FeatureSource


class MGSVGrounder(GrounderEstimator[_Videos, MusicCatalogue]):
    """Music grounding by short video with the MaDe model (Xin et al., ICCV 2025).

    ``fit`` trains the model on an MGSV-EC frame and indexes the tracks it saw as the
    catalogue; ``predict`` grounds each video on its own track (SmG, when ``X`` has
    ``music_id``) or on the best catalogue track (MsG); ``rank`` gives the top-k tracks
    with the moment on each; ``decision_function`` the (videos x tracks) scores.

    Parameters
    ----------
    features : path or FeatureSource, optional
        Default feature source (a packed store, an MGSV-EC feature tree or in-memory
        arrays); every method also takes ``features=``.
    detector : {"window", "detr"}
        The moment head. "window" (default) scores every candidate window of the track
        (a start every 1.25 s, the video's length, refined offsets; see
        :mod:`mgsv_sk.nn.window`) and is trained against the batch's other tracks, so its
        ``moment_score`` says whether the track holds a fitting moment; "detr" is the
        paper's single-query DETR detector (reproduces the paper; its ``moment_score`` is
        the foreground probability, trained on positives only).
    d_model, n_heads, temporal_layers, encoder_layers, decoder_layers, ffn_mult : int
        Architecture (paper: 256, 8, 1, 2, 6, 4; the encoder / decoder layers are DETR's).
    temporal_dropout, detector_dropout : float
        Dropout of the temporal self-attention (0.1; the paper's 0.8 is for 100-epoch
        training) and of the DETR detector (0.1).
    retrieval_scores : tuple of {"dual", "xpool"}
        Retrieval scores trained and summed at inference (paper: both).
    xpool_top_k : int, optional
        At inference, compute the X-Pool score only for each video's ``xpool_top_k`` best
        tracks by dual score (two-stage search for large catalogues); None: every track.
    l1_weight, giou_weight, fg_weight, dual_weight, xpool_weight : float
        Loss weights (paper: 4, 1, 0.8, 1, 1; l1, giou and fg are DETR's).
    window_weight, boundary_weight, match_weight : float
        Window head loss weights: the cross-entropy over candidate windows, the L1
        refinement of their starts, and the moment score's cross-entropy against the
        batch's other tracks (0 disables the negatives' term).
    snippet_weight : float
        Weight of the per-snippet evidence loss (an addition to the paper; 0 disables it).
    aux_loss : bool
        Detection losses on every decoder layer, not just the last.
    temperature_init : float
        Initial InfoNCE temperature (learned; paper 0.03).
    lr, weight_decay, warmup_fraction, grad_clip : float
        AdamW, linear warm-up over this fraction of the steps (of ``max_epochs``), then
        ``lr_schedule``; gradient norm clipping (1e-3, 0, 0.02, 1.0; the paper: 3e-4 with
        batch 512 for up to 100 epochs). The paper's configuration is ``detector="detr", temporal_dropout=0.8,
        lr=3e-4, batch_size=512``; the defaults are what learns in minutes on a CPU
        (measured in ``benchmarks/accuracy.py``).
    batch_size : int
        Videos per training batch (paper 512; 64 gives a CPU fit twice the optimiser steps
        per epoch of 128, which the first epochs need: measured in
        ``benchmarks/accuracy.py``). Per process
        in data-parallel training (:mod:`mgsv_sk.train.distributed`): a step then averages
        ``batch_size * world_size`` videos, and each process's InfoNCE uses its own batch
        (and its own memory, ``memory_tracks``).
    memory_tracks : int
        Cross-batch memory: the encodings of the last this many distinct tracks of
        earlier batches join each batch's video-to-music InfoNCE as negatives (detached, so
        nothing is encoded twice; the dual score against all of them, X-Pool against as
        many as the batch has tracks, those closest to its videos). A batch of 64 offers
        about 60 tracks. Consulted from the second epoch (from the first step it slowed the
        early epochs of ``benchmarks/accuracy.py``'s ``hook`` world). At the 5-minute
        budget 1,024 raised test R@1 on unseen tracks by 4 points in the ``noisy`` world
        and 1 in ``aligned`` and ``signature``, cost 1 in ``hook``, and up to 6 % more fit
        time. 0 disables it.
    lr_schedule : {"constant", "cosine"}
        The rate after warm-up: "constant" (default) keeps the peak rate until the fit
        ends, so what an epoch learns does not depend on ``max_epochs``, and the weight
        average does the annealing; "cosine" decays it to zero at ``max_epochs`` (the
        schedule before 0.2: an epoch kept early was never annealed).
    average_halflife : float
        The fit validates, keeps and returns an exponential moving average of the weights
        (half-life in epochs; until it has seen that many epochs, the uniform mean of the
        steps so far), so whichever epoch early stopping keeps is a finished model; 0
        returns the raw weights. ``returned_weights_`` says which weights were returned.
    max_epochs, patience : int
        Epoch budget and early-stopping patience (epochs without improvement, judged on
        the monitored metric's mean over two consecutive epochs).
    validation_fraction : float
        Share of the training tracks held out (grouped by ``music_id``) for early stopping;
        0 trains ``max_epochs`` on everything.
    early_stopping_metric : str
        Validation metric to maximise, a scorer name such as "mrr" (the default: the mean
        reciprocal rank of the held-out videos among held-out and training tracks, which
        falls when retrieval on new tracks falls and, being continuous, is the least noisy
        of the protocol's measures on a small validation split), "miou", "r1", "mor10@0.5".
    bf16 : bool
        Shorthand for ``mixed_precision="bf16"``: bfloat16 autocast, on the CPU too (faster
        where the CPU supports it; see the README for its measured accuracy effect).
    mixed_precision : {"auto", "bf16", "fp16", "fp32"}
        Autocast precision of training and inference. "auto": float32 on the CPU; on a
        GPU bfloat16 where it is supported (Ampere and later), else float16 with loss
        scaling (``torch.amp.GradScaler``). "fp16" is for CUDA only. Attention softmax,
        retrieval scores and losses stay float32 in every mode.
    device : str or torch.device
        Where the model is trained and run: "cpu" (default), "cuda", "cuda:N", or "auto"
        (CUDA when ``torch.cuda.is_available()``, else the CPU). Inputs are moved to it
        batch by batch and every result comes back as numpy. A model fitted on a GPU
        pickles and saves with CPU weights and, loaded where ``device`` is unavailable,
        runs on the CPU. In a ``torch.distributed`` run (see :mod:`mgsv_sk.train.distributed`)
        "cuda" means ``cuda:LOCAL_RANK``.
    n_threads : int, optional
        torch intra-op threads during fit/predict; None keeps torch's setting.
    random_state : int, RandomState or None
        Seed of initialisation, batching and dropout (a RandomState gives one draw as the
        seed). Equal int seeds give identical models on the same machine with
        ``n_threads=1``; with more threads, torch's parallel reductions may change the
        last bits (predictions then agree to about 1e-4, see the README).
    verbose : int
        0 silent; 1 progress bars (one per training epoch, and over the videos of
        ``predict`` / ``rank`` / ``snippet_evidence``) and the epoch summary in the log.

    Attributes
    ----------
    model_ : MaDe
        The trained network (eval mode).
    catalogue_ids_ : list of str
        Tracks served by MsG ``predict`` and ``rank``.
    catalogue_ : MusicCatalogue
        Their cached encodings.
    history_ : list of dict
        Per epoch: the loss terms, validation metrics (``val_mIoU``, ``val_R@1``, ...),
        learning rate and seconds (``pd.DataFrame(history_)`` tabulates it).
    best_epoch_, n_epochs_ : int
        The epoch whose weights were kept, and the epochs run.
    stopped_ : str
        "converged", "max_epochs" or "interrupted".
    returned_weights_ : str
        Which weights the model holds and why, e.g. "the average of the weights (EMA,
        half-life 1 epochs) at the end of epoch 7: the best 2-epoch mean of validation
        mrr; stopped after 5 epochs without improvement (12 epochs run)". The history's
        ``returned`` column marks that epoch.
    n_threads_ : int
        torch intra-op threads the fit ran with.

    Notes
    -----
    ``score`` is SmG mIoU. Differences from the paper's public code are listed in
    :class:`mgsv_sk.nn.model.MaDe`. Pickles (joblib) are for trusted sources only; use
    :meth:`save` / :meth:`load` to exchange models.
    """

    def __init__(
        self,
        features: Any = None,
        *,
        detector: str = "window",
        d_model: int = 256,
        n_heads: int = 8,
        temporal_layers: int = 1,
        encoder_layers: int = 2,
        decoder_layers: int = 6,
        ffn_mult: int = 4,
        temporal_dropout: float = 0.1,
        input_dropout: float = 0.0,
        detector_dropout: float = 0.1,
        retrieval_scores: tuple[str, ...] = ("dual", "xpool"),
        xpool_top_k: int | None = None,
        moment_weight: float | str = "auto",
        rerank_depth: int = 10,
        l1_weight: float = 4.0,
        giou_weight: float = 1.0,
        fg_weight: float = 0.8,
        snippet_weight: float = 1.0,
        window_weight: float = 1.0,
        boundary_weight: float = 1.0,
        match_weight: float = 1.0,
        dual_weight: float = 1.0,
        xpool_weight: float = 1.0,
        aux_loss: bool = True,
        temperature_init: float = 0.03,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_fraction: float = 0.02,
        lr_schedule: str = "constant",
        average_halflife: float = 1.0,
        grad_clip: float = 1.0,
        batch_size: int = 64,
        memory_tracks: int = 1024,
        max_epochs: int = 20,
        patience: int = 5,
        validation_fraction: float = 0.1,
        validation_gallery: Any = "train",
        early_stopping_metric: str = "mrr",
        bf16: bool = False,
        mixed_precision: str = "auto",
        device: str | torch.device = "cpu",
        n_threads: int | None = None,
        random_state: int | None = None,
        verbose: int = 0,
    ) -> None:
        self.features = features
        self.detector = detector
        self.d_model = d_model
        self.n_heads = n_heads
        self.temporal_layers = temporal_layers
        self.encoder_layers = encoder_layers
        self.decoder_layers = decoder_layers
        self.ffn_mult = ffn_mult
        self.temporal_dropout = temporal_dropout
        self.input_dropout = input_dropout
        self.detector_dropout = detector_dropout
        self.retrieval_scores = retrieval_scores
        self.xpool_top_k = xpool_top_k
        self.moment_weight = moment_weight
        self.rerank_depth = rerank_depth
        self.l1_weight = l1_weight
        self.giou_weight = giou_weight
        self.fg_weight = fg_weight
        self.snippet_weight = snippet_weight
        self.window_weight = window_weight
        self.boundary_weight = boundary_weight
        self.match_weight = match_weight
        self.dual_weight = dual_weight
        self.xpool_weight = xpool_weight
        self.aux_loss = aux_loss
        self.temperature_init = temperature_init
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_fraction = warmup_fraction
        self.lr_schedule = lr_schedule
        self.average_halflife = average_halflife
        self.grad_clip = grad_clip
        self.batch_size = batch_size
        self.memory_tracks = memory_tracks
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.validation_gallery = validation_gallery
        self.early_stopping_metric = early_stopping_metric
        self.bf16 = bf16
        self.mixed_precision = mixed_precision
        self.device = device
        self.n_threads = n_threads
        self.random_state = random_state
        self.verbose = verbose

    #: Every parameter's constraints, checked (all at once, one message) before a fit
    #: touches any fitted state; the defaults are the signature's.
    _parameter_constraints: ClassVar[dict[str, Any]] = {
        "features": "no_validation",
        "detector": [StrOptions(set(DETECTORS))],
        "d_model": [Interval(Integral, 2, None, closed="left")],
        "n_heads": [Interval(Integral, 1, None, closed="left")],
        "temporal_layers": [Interval(Integral, 0, None, closed="left")],
        "encoder_layers": [Interval(Integral, 0, None, closed="left")],
        "decoder_layers": [Interval(Integral, 1, None, closed="left")],
        "ffn_mult": [Interval(Integral, 1, None, closed="left")],
        "temporal_dropout": [Interval(Real, 0, 1, closed="left")],
        "input_dropout": [Interval(Real, 0, 1, closed="left")],
        "detector_dropout": [Interval(Real, 0, 1, closed="left")],
        "retrieval_scores": [list, tuple, str],
        "xpool_top_k": [Interval(Integral, 1, None, closed="left"), None],
        "moment_weight": [Interval(Real, 0, None, closed="left"), StrOptions({"auto"})],
        "rerank_depth": [Interval(Integral, 1, None, closed="left")],
        **{name: [Interval(Real, 0, None, closed="left")] for name in (
            "l1_weight", "giou_weight", "fg_weight", "snippet_weight", "window_weight",
            "boundary_weight", "match_weight", "dual_weight", "xpool_weight",
            "weight_decay", "grad_clip")},
        "aux_loss": ["boolean"],
        "temperature_init": [Interval(Real, 0, None, closed="neither")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "warmup_fraction": [Interval(Real, 0, 1, closed="both")],
        "lr_schedule": [StrOptions(set(LR_SCHEDULES))],
        "average_halflife": [Interval(Real, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "memory_tracks": [Interval(Integral, 0, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "patience": [Interval(Integral, 1, None, closed="left")],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "validation_gallery": [StrOptions({"train", "held_out"}), "array-like"],
        "early_stopping_metric": [StrOptions(set(EARLY_STOPPING_METRICS))],
        "bf16": ["boolean"],
        "mixed_precision": [StrOptions(set(MIXED_PRECISION))],
        "device": [str, torch.device],
        "n_threads": [Interval(Integral, 1, None, closed="left"), None],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def _moment_weight(self) -> float:
        """``moment_weight`` resolved: "auto" re-ranks by the window head's moment score
        (a trained fit-or-not score) and not by DETR's (a foreground probability trained
        on positives only)."""
        if isinstance(self.moment_weight, str):
            return DEFAULT_MOMENT_WEIGHT if self.detector == "window" else 0.0
        return float(self.moment_weight)

    def _rerank(self, moment_weight: Any = None, rerank_depth: Any = None) -> tuple[float, int]:
        return super()._rerank(self._moment_weight() if moment_weight is None
                               else moment_weight, rerank_depth)

    # -- fit -------------------------------------------------------------------------------
    def fit(self, X: pd.DataFrame, y: Any = None, features: Any = None, *,
            eval_set: Any = None) -> MGSVGrounder:
        """Train on an MGSV-EC frame; its tracks become the catalogue.

        Parameters
        ----------
        X : DataFrame
            Rows with at least ``video_id``, ``music_id``, ``music_start``, ``music_end``,
            ``music_total_duration``.
        y : ignored
            The ground truth is read from ``X``'s columns.
        features : feature source, optional
            Overrides the ``features`` parameter for this call.
        eval_set : DataFrame, (DataFrame, features) or a list of them, optional
            Labelled splits evaluated after every epoch, for the record (early stopping
            reads the validation split only): the ``i``-th split's metrics are
            ``history_[e]["eval{i}_R@1"]``, ... (retrieval against the split's own
            tracks, as the protocol does, ranked as ``rank`` ranks). A split without its
            own features reads the fit's source.

        Notes
        -----
        Bad input (``AnnotationError``, ``FeatureError``, invalid parameters) is refused
        before training and leaves an earlier fit in place. Once training starts, a failure
        (an error, or Ctrl-C before the first epoch completes) leaves the estimator
        unfitted; Ctrl-C later keeps the best weights so far (``stopped_ ==
        "interrupted"``). Moments starting at or after 240 s are refused; moments ending
        after 240 s are trained as ending there, with a ``UserWarning``.
        """
        self._check_params()
        frame = self._frame(X, FIT_COLUMNS, keep_duplicates=False)
        check_trainable_moments(frame)
        prepared = prepare_fit(self.get_params(deep=False), frame, self._source(features),
                               eval_set, self._moment_weight())
        # Input is valid: from here a failure (an error, Ctrl-C before one epoch completed)
        # leaves the estimator clearly unfitted, never serving an earlier fit's model as if
        # it were this one's. The fitted attributes are set together at the end.
        self._forget_fit()
        state = fit_grounder(prepared)
        if state.stopped == "interrupted":
            warnings.warn("fit was interrupted: the model holds the best weights of the "
                          f"{state.n_epochs} completed epoch(s)", RuntimeWarning,
                          stacklevel=2)
        self._set_fitted(state)
        self._remember_source(features)  # the catalogue's encodings came from this source
        return self

    def _set_fitted(self, state: FittedState) -> None:
        """Apply a fitted state (from ``fit`` or a saved model): every fitted attribute
        at once."""
        self.model_ = state.model
        self.catalogue_ = state.catalogue
        self.catalogue_ids_ = list(state.catalogue.ids)
        self.history_ = state.history
        self.best_epoch_ = state.best_epoch
        self.n_epochs_ = state.n_epochs
        self.stopped_ = state.stopped
        self.returned_weights_ = state.returned
        if state.n_threads is not None:
            self.n_threads_ = state.n_threads
        self.fit_token_ = new_fit_token()

    def _fitted_state(self) -> FittedState:
        return FittedState(self.model_, self.catalogue_, self.history_, self.best_epoch_,
                           self.n_epochs_, self.stopped_, getattr(self, "n_threads_", None),
                           getattr(self, "returned_weights_", ""))

    def _forget_fit(self) -> None:
        for name in [k for k in vars(self) if k.endswith("_") and not k.startswith("_")]:
            delattr(self, name)

    # -- inference hooks (see mgsv_sk.grounding.base) ----------------------------------------
    def _computing(self) -> Any:
        return torch_threads(self.n_threads)

    def _encode_videos(self, frame: pd.DataFrame, source: FeatureSource) -> _Videos:
        ids = frame["video_id"].tolist()
        emb = video_embeddings(self.model_, ids, source, autocast=self._autocast_dtype(),
                               verbose=self.verbose).numpy()
        require_finite(ids, ~np.isfinite(emb).all(axis=1), "video")
        return _Videos(ids, emb, source)

    def _served_catalogue(self) -> MusicCatalogue:
        return self.catalogue_

    def _encode_catalogue(self, music_ids: list[str], source: FeatureSource) -> MusicCatalogue:
        catalogue = MusicCatalogue.build(self.model_, music_ids, source,
                                         autocast=self._autocast_dtype())
        catalogue.check_finite()
        return catalogue

    def _serve(self, catalogue: Any) -> None:
        self.catalogue_ = catalogue
        self.catalogue_ids_ = list(catalogue.ids)

    def _scorer(self, catalogue: Catalogue) -> TorchXPool | None:
        return xpool_scorer(self.model_, catalogue)

    def _scores(self, videos: _Videos, catalogue: MusicCatalogue) -> np.ndarray:
        return retrieval_scores(videos.emb, catalogue, self._scorer(catalogue),
                                use_dual=self.model_.cfg.use_dual,
                                xpool_top_k=self.xpool_top_k, track_chunk=64)

    def _pair_scores(self, videos: _Videos, rows: np.ndarray,
                     catalogue: MusicCatalogue) -> np.ndarray:
        return pair_scores(videos.emb, rows, catalogue, self._scorer(catalogue))

    def _ground(self, videos: _Videos, video_rows: np.ndarray, catalogue: MusicCatalogue,
                track_rows: np.ndarray, seconds: np.ndarray,
                moments: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids = [videos.ids[r] for r in video_rows]
        return ground_pairs(self.model_, ids, track_rows, catalogue, videos.source, seconds,
                            moments, autocast=self._autocast_dtype(), verbose=self.verbose)

    def snippet_evidence(self, X: pd.DataFrame, features: Any = None) -> list[np.ndarray]:
        """The detector's per-snippet evidence: for each row of ``X``, the probability that
        each valid 2.5 s snippet of the row's track lies inside the video's moment.

        Parameters
        ----------
        X : DataFrame
            MGSV-EC rows with ``video_id`` and ``music_id`` (the track to read the evidence
            on; for MsG, take ``music_id`` from ``predict``'s output first).
        features : feature source, optional
            Overrides the estimator's ``features`` for this call.

        Returns
        -------
        list of ndarray
            One float64 array of shape (S_i,) per row, in the order of ``X``: the sigmoid of
            the evidence head's logit for each valid snippet of the track (snippet k is
            centred at 2.5 k s). :func:`mgsv_sk.plot.plot_timeline` draws it.
        """
        check_is_fitted(self)
        frame = self._frame(X)
        if "music_id" not in frame.columns:
            raise ValueError(
                "snippet_evidence needs a music_id column (the track to read the evidence "
                "on); for music-set grounding use predict(X)['music_id'] as that column")
        source = self._source(features)
        music_ids = frame["music_id"].tolist()
        ids = frame["video_id"].tolist()
        with torch_threads(self.n_threads):
            source.check_available(ids, [])
            catalogue = self._catalogue_for(music_ids, source, features)
            return snippet_evidence(self.model_, ids, catalogue.positions(music_ids),
                                    catalogue, source, autocast=self._autocast_dtype(),
                                    verbose=self.verbose)

    def recommend(self, video_paths: Any, k: int = 10, *, video_encoder: Any = None,
                  moments_per_track: int = 1) -> pd.DataFrame:
        """Top-``k`` catalogue tracks for video files, with the moment(s) to play on each.

        Parameters
        ----------
        video_paths : path or list of paths
            Video files (or folders of them); ``video_id`` is each file's stem.
        k : int
            Tracks per video.
        video_encoder : Encoder, optional
            Frame encoder (default: CLIP ViT-B/32 from the hub cache, as the release).
        moments_per_track : int
            Moments per track (``windows`` column when > 1).

        Returns
        -------
        DataFrame
            :meth:`rank`'s columns plus ``video_path`` (see
            :func:`mgsv_sk.extract.recommend.recommend_videos`).
        """
        check_is_fitted(self)
        from mgsv_sk.extract.recommend import recommend_videos

        return recommend_videos(self, video_paths, k, video_encoder=video_encoder,
                                moments_per_track=moments_per_track)

    def compact_catalogue(self, states: str = "float32", index: str = "auto") -> MGSVGrounder:
        """Store the catalogue's snippet arrays compactly and index it for large searches.

        Parameters
        ----------
        states : {"float32", "float16", "int8"}
            Storage of the cached snippet tokens and X-Pool states (int8: a quarter of the
            bytes, X-Pool scores within ``mgsv_sk.search.compact.SCORE_TOLERANCE``).
        index : {"auto", "exact", "hnsw", "ivf"}
            First stage of the two-stage search (``xpool_top_k``): "auto" scans exactly up
            to 50,000 tracks and builds a FAISS IVF index above (``pip install
            "mgsv-sk[ann]"``). With an approximate index, tracks outside its top-K score
            -inf in ``decision_function``.

        A later ``set_catalogue`` builds a float32, exactly scanned catalogue again; a saved
        model stores float32 arrays (call this again after ``load``). The search itself is
        :func:`mgsv_sk.search.catalogue.retrieval_scores`, shared with the onnxruntime
        backend.
        """
        check_is_fitted(self)
        self._serve(self.catalogue_.compacted(states, index))
        return self

    # -- device ------------------------------------------------------------------------------
    def _autocast_dtype(self) -> torch.dtype | None:
        """Inference autocast on the model's device; float32 where the chosen precision is
        unavailable there (e.g. a float16 model served on a CPU)."""
        return resolve_precision(model_device(self.model_),
                                 getattr(self, "mixed_precision", "auto"), bool(self.bf16),
                                 strict=False).dtype

    def _place_model(self) -> None:
        """Put a loaded or unpickled model on ``device`` when that device is available here,
        else on the CPU (a model fitted on a GPU is served by a CPU-only machine)."""
        model = getattr(self, "model_", None)
        if model is None:
            return
        try:
            device = resolve_device(self.device)
        except ValueError as exc:
            device = torch.device("cpu")
            logger.warning("running the model on the CPU: %s", exc)
        model.to(device)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        model = state.get("model_")
        if isinstance(model, torch.nn.Module) and model_device(model).type != "cpu":
            state["model_"] = copy.deepcopy(model).cpu()  # loadable without a GPU
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A model pickled before a parameter existed gets that parameter's default.
        defaults = inspect.signature(type(self).__init__).parameters
        state = {**{name: defaults[name].default for name in self._get_param_names()},
                 **state}
        super().__setstate__(state)
        self._place_model()

    # -- persistence -----------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the fitted model to a folder without pickle: JSON config + ``.npz``
        weights and catalogue, with a checksum manifest. Written atomically."""
        check_is_fitted(self)
        from mgsv_sk.estimators._persistence import save_grounder

        save_grounder(self.get_params(deep=False), self._fitted_state(), path,
                      overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike[str], features: Any = None) -> MGSVGrounder:
        """Read a model written by :meth:`save` (checksums verified)."""
        from mgsv_sk.estimators._persistence import load_grounder

        est, state = load_grounder(cls, path, features=features)
        est._set_fitted(state)
        est._place_model()  # weights are stored for the CPU; move them to ``device``
        return est

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        tags.target_tags.required = False
        return tags
