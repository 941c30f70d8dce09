"""MGSVGrounder: the MaDe model and a retrieval ranker behind the scikit-learn API."""

from __future__ import annotations

import copy
import inspect
import logging
import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch

from mgsv_sk.data import FIT_COLUMNS, check_trainable_moments
from mgsv_sk.data.features import FeatureSource, require_finite
from mgsv_sk.errors import InvalidInputError
from mgsv_sk.grounding import new_fit_token
from mgsv_sk.grounding.hyperparameters import Declaration, declared
from mgsv_sk.grounding.sklearn_base import GrounderEstimator
from mgsv_sk.grounding.validation import check_fitted
from mgsv_sk.infer.batched import ground_pairs, snippet_evidence, video_embeddings
from mgsv_sk.infer.catalogue import MusicCatalogue, TorchXPool, xpool_scorer
from mgsv_sk.infer.device import (
    model_device,
    resolve_device,
    resolve_precision,
    torch_threads,
)
from mgsv_sk.search import Catalogue, pair_scores, retrieval_scores
from mgsv_sk.train import FittedState
from mgsv_sk.train.fitting import fit_grounder, prepare_fit
from mgsv_sk.train.parameters import GROUNDER_PARAMETERS

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


@declared(GROUNDER_PARAMETERS)
class MGSVGrounder(GrounderEstimator[_Videos, MusicCatalogue]):
    """Music grounding by short video with the MaDe model (Xin et al., ICCV 2025).

    ``fit`` trains the model on an MGSV-EC frame and indexes the tracks it saw as the
    catalogue; ``predict`` grounds each video on its own track (SmG, when ``X`` has
    ``music_id``) or on the best catalogue track (MsG); ``rank`` gives the top-k tracks
    with the moment on each; ``decision_function`` the (videos x tracks) scores.

    Parameters
    ----------
    <hyper-parameters>

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
    moment_weight_ : float or None
        With ``moment_weight="auto"`` and a validation split: the re-ranking weight the
        fit chose on it (the best validation R@1 of ``mgsv_sk.train._fusion.WEIGHTS``),
        which ranking then uses; None otherwise.
    moment_weight_scores_ : dict or None
        The validation R@1 of each weight tried (keys: the weights as text).

    Notes
    -----
    ``score`` is SmG mIoU. Differences from the paper's public code are listed in
    :class:`mgsv_sk.nn.model.MaDe`. Pickles (joblib) are for trusted sources only; use
    :meth:`save` / :meth:`load` to exchange models.
    """

    _hyperparameters: ClassVar[Declaration]  # set by @declared

    if TYPE_CHECKING:  # the decorator builds __init__ from GROUNDER_PARAMETERS
        def __init__(self, features: Any = None, **params: Any) -> None: ...

    def _moment_weight(self) -> float:
        """``moment_weight`` resolved: "auto" is the weight the fit chose on its
        validation split (``moment_weight_``), else :meth:`_prior_moment_weight`."""
        tuned = getattr(self, "moment_weight_", None)
        if isinstance(self.moment_weight, str) and tuned is not None:
            return float(tuned)
        return self._prior_moment_weight()

    def _prior_moment_weight(self) -> float:
        """The weight before any is chosen: "auto" re-ranks by the window head's moment
        score (a trained fit-or-not score) and not by DETR's (a foreground probability
        trained on positives only)."""
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
        "interrupted"``). Moments starting at or after 240 s, or after the end of their
        track's music features, are refused; moments ending after 240 s are trained as
        ending there, and those ending more than a snippet after their track's features on
        what the features cover, each with a ``UserWarning``.
        """
        self._check_params()
        frame = self._frame(X, FIT_COLUMNS, keep_duplicates=False)
        check_trainable_moments(frame)
        tune = isinstance(self.moment_weight, str) and self.detector == "window"
        prepared = prepare_fit(self.get_params(deep=False), frame, self._source(features),
                               eval_set, self._prior_moment_weight(), self._hyperparameters,
                               tune_moment_weight=tune)
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
        self.moment_weight_ = state.moment_weight
        self.moment_weight_scores_ = state.moment_weight_scores
        if state.n_threads is not None:
            self.n_threads_ = state.n_threads
        self.fit_token_ = new_fit_token()

    def _fitted_state(self) -> FittedState:
        return FittedState(self.model_, self.catalogue_, self.history_, self.best_epoch_,
                           self.n_epochs_, self.stopped_, getattr(self, "n_threads_", None),
                           getattr(self, "returned_weights_", ""),
                           getattr(self, "moment_weight_", None),
                           getattr(self, "moment_weight_scores_", None))

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
        check_fitted(self)
        frame = self._frame(X)
        if "music_id" not in frame.columns:
            raise InvalidInputError(
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
        check_fitted(self)
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
        :func:`mgsv_sk.search.retrieval.retrieval_scores`, shared with the onnxruntime
        backend.
        """
        check_fitted(self)
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
        check_fitted(self)
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
