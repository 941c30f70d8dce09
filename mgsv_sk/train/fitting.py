"""From an estimator's parameters and a validated frame to a fitted state: the network's
and the loop's configs, the seed, the validation split and its gallery, the extra
evaluation splits, the data-parallel group, then the loop and the catalogue encoding.

:class:`mgsv_sk.MGSVGrounder` holds the parameters and applies the result; everything it
takes to train is here. ``params`` is the estimator's ``get_params(deep=False)``; which
parameter feeds which config field is declared once, in :mod:`mgsv_sk.train.parameters`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import GroupShuffleSplit
from sklearn.utils import check_random_state

from mgsv_sk.data import (
    FIT_COLUMNS,
    check_moments_on_features,
    has_video_durations,
    validate_annotations,
    video_durations,
)
from mgsv_sk.data.features import FeatureSource, as_feature_source
from mgsv_sk.data.spans import MAX_MUSIC_SECONDS
from mgsv_sk.errors import InvalidInputError
from mgsv_sk.grounding.hyperparameters import Declaration
from mgsv_sk.infer.catalogue import MusicCatalogue
from mgsv_sk.infer.device import resolve_device, resolve_precision, rng_devices, torch_threads
from mgsv_sk.nn.config import MaDeConfig
from mgsv_sk.nn.losses import LossWeights
from mgsv_sk.nn.model import MaDe
from mgsv_sk.train import distributed as ddp
from mgsv_sk.train._fitted import FittedState
from mgsv_sk.train._fusion import tune_moment_weight
from mgsv_sk.train._moments import FeatureMoments, feature_moments
from mgsv_sk.train._training import Split, TrainConfig, fit_model
from mgsv_sk.train.parameters import GROUNDER_PARAMETERS

__all__ = ["PreparedFit", "fit_grounder", "loss_weights", "model_config", "prepare_fit", "seed_of",
           "train_config"]

logger = logging.getLogger(__name__)

Params = Mapping[str, Any]


def seed_of(random_state: Any) -> int:
    """The fit's seed: ``random_state`` itself (int), a draw from it (RandomState), or
    fresh entropy (None)."""
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(1)[0])
    if isinstance(random_state, (int, np.integer)):
        return int(random_state)
    return int(check_random_state(random_state).randint(2**31 - 1))


def model_config(params: Params, video_dim: int, music_dim: int,
                 declaration: Declaration = GROUNDER_PARAMETERS, **details: Any) -> MaDeConfig:
    """The network's config from the parameters routed to ``model``; ``details``:
    MaDeConfig fields no parameter exposes (max_frames, window_hidden, ...)."""
    return MaDeConfig(**details, video_dim=video_dim, music_dim=music_dim,
                      **declaration.route(params, "model"))


def loss_weights(params: Params, declaration: Declaration = GROUNDER_PARAMETERS) -> LossWeights:
    return LossWeights(**declaration.route(params, "loss"))


def train_config(params: Params, seed: int, moment_weight: float,
                 dist: ddp.DistContext | None,
                 declaration: Declaration = GROUNDER_PARAMETERS) -> TrainConfig:
    """The loop's config; device and precision problems all in one ValueError."""
    problems = []
    device: torch.device | None = None
    amp: torch.dtype | None = None
    try:
        device = resolve_device(params["device"], None if dist is None else dist.local_rank)
    except ValueError as exc:
        problems.append(str(exc))
    if device is not None:
        try:
            amp = resolve_precision(device, params["mixed_precision"],
                                    bool(params["bf16"])).dtype
        except ValueError as exc:
            problems.append(str(exc))
        if dist is not None and dist.backend == "nccl" and device.type != "cuda":
            problems.append(f"device resolves to {device} but the torch.distributed group "
                            "uses the nccl backend, which needs CUDA; pass device='cuda', "
                            "or initialise the group with backend='gloo' for CPU training")
    if problems:
        raise InvalidInputError("Invalid MGSVGrounder parameters:\n  - "
                                + "\n  - ".join(problems))
    return TrainConfig(**declaration.route(params, "train"), moment_weight=moment_weight,
                       seed=seed, loss_weights=loss_weights(params, declaration),
                       device=str(device), amp_dtype=amp)


def _make_split(part: pd.DataFrame, source: FeatureSource) -> Split:
    start = part["music_start"].to_numpy(np.float64)
    end = part["music_end"].to_numpy(np.float64)
    if has_video_durations(part):
        seconds = video_durations(part)
    else:  # no video columns: the moment is as long as the video
        seconds = np.minimum(end, MAX_MUSIC_SECONDS) - start
    return Split(part["video_id"].tolist(), part["music_id"].tolist(), start, end,
                 part["music_total_duration"].to_numpy(np.float64), seconds, source)


def _split(params: Params, frame: pd.DataFrame, source: FeatureSource,
           seed: int) -> tuple[Split, Split | None]:
    """Training and validation splits, grouped by track (validation tracks are unseen)."""
    fraction = params["validation_fraction"]
    n_tracks = frame["music_id"].nunique()
    if fraction == 0 or n_tracks < 4:
        if fraction > 0:
            logger.warning("only %d tracks: training without a validation split", n_tracks)
        return _make_split(frame, source), None
    splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed % (2**32))
    train_idx, valid_idx = next(splitter.split(frame, groups=frame["music_id"]))
    train = _make_split(frame.iloc[train_idx], source)
    valid = _make_split(frame.iloc[valid_idx], source)
    valid.distractors = _distractors(params["validation_gallery"], train, valid, source)
    return train, valid


def _distractors(choice: Any, train: Split, valid: Split, source: FeatureSource) -> list[str]:
    """Tracks that join the validation gallery (``validation_gallery``): the training
    tracks ("train"), none ("held_out"), or the given ids."""
    if isinstance(choice, str):
        return list(dict.fromkeys(train.music_ids)) if choice == "train" else []
    held_out = set(valid.music_ids)
    ids = [m for m in dict.fromkeys(str(m) for m in choice) if m not in held_out]
    source.check_available([], ids)
    return ids


def _eval_splits(eval_set: Any, source: FeatureSource) -> list[tuple[str, Split]]:
    """``fit(eval_set=...)`` as named splits, validated before training starts."""
    if eval_set is None:
        return []
    single = isinstance(eval_set, pd.DataFrame) or (
        isinstance(eval_set, tuple) and len(eval_set) == 2
        and isinstance(eval_set[0], pd.DataFrame))
    items = [eval_set] if single else list(eval_set)
    out = []
    for i, item in enumerate(items):
        X_eval, own = item if isinstance(item, tuple) else (item, None)
        frame = validate_annotations(X_eval, FIT_COLUMNS, source="X")
        split_source = source if own is None else as_feature_source(own)
        split_source.check_available(frame["video_id"], list(pd.unique(frame["music_id"])))
        out.append((f"eval{i}", _make_split(frame, split_source)))
    return out


@dataclass(frozen=True)
class PreparedFit:
    """Everything a fit needs, built and checked before any fitted state is let go."""

    seed: int
    dist: ddp.DistContext | None
    train_cfg: TrainConfig
    model_cfg: MaDeConfig
    device: torch.device
    source: FeatureSource
    music_ids: list[str]
    train: Split
    valid: Split | None
    evals: list[tuple[str, Split]]
    n_threads: int | None
    #: the training features' per-dimension (mean, scale), video and music: the encoders'
    #: input standardisation
    input_moments: tuple[FeatureMoments, FeatureMoments]
    #: choose the re-ranking weight on the validation split at the end (``"auto"``)
    tune_moment_weight: bool = False


def prepare_fit(params: Params, frame: pd.DataFrame, source: FeatureSource, eval_set: Any,
                moment_weight: float, declaration: Declaration = GROUNDER_PARAMETERS,
                tune_moment_weight: bool = False) -> PreparedFit:
    """Check and build everything of a fit that can fail on its input (configs, splits,
    every feature read once); raises before anything is trained. ``moment_weight``: the
    re-ranking the validation ranks by during the fit; ``tune_moment_weight``: choose it
    on the validation split at the end (:mod:`._fusion`)."""
    seed = seed_of(params["random_state"])
    dist = ddp.current()  # data-parallel when a torch.distributed group exists
    cfg = train_config(params, seed, moment_weight, dist, declaration)
    device = torch.device(cfg.device)
    if dist is not None:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        seed = ddp.broadcast_object(seed, dist, device)  # rank 0's seed on every rank
        cfg = replace(cfg, seed=seed)
    music_ids = list(pd.unique(frame["music_id"]))
    source.check_available(frame["video_id"], music_ids)
    model_cfg = model_config(params, source.video_dim, source.music_dim, declaration)
    train, valid = _split(params, frame, source, seed)
    evals = _eval_splits(eval_set, source)
    # Every feature is read and checked once before the previous fit is let go: a
    # corrupt file is refused while the earlier model is still in place.
    source.video_lengths(frame["video_id"].tolist())
    snippets = dict(zip(music_ids, source.music_lengths(music_ids).tolist(), strict=True))
    check_moments_on_features(frame, snippets)  # a moment the features cannot hold
    input_moments = (feature_moments(source, train.video_ids, "video", seed),
                     feature_moments(source, train.music_ids, "music", seed))
    return PreparedFit(seed, dist, cfg, model_cfg, device, source, music_ids, train, valid,
                       evals, params["n_threads"], input_moments, tune_moment_weight)


def fit_grounder(prepared: PreparedFit) -> FittedState:
    """Train the network and encode the catalogue: the fitted state ``fit`` applies."""
    p = prepared
    with torch_threads(p.n_threads), torch.random.fork_rng(devices=rng_devices(p.device)):
        torch.manual_seed(p.seed)
        n_threads_used = torch.get_num_threads()
        model = MaDe(p.model_cfg)
        for encoder, (mean, scale) in zip((model.video_encoder, model.music_encoder),
                                        p.input_moments, strict=True):
            encoder.set_input_moments(torch.from_numpy(mean), torch.from_numpy(scale))
        model = model.to(p.device)
        if p.dist is not None and p.dist.world_size > 1:
            torch.manual_seed((p.seed + p.dist.rank) % 2**64)  # own dropout masks per rank
        result = fit_model(model, p.train, p.valid, p.train_cfg, p.dist, p.evals)
        weight, tried = None, None
        if p.tune_moment_weight and p.valid is not None and result.stopped != "interrupted":
            weight, tried = tune_moment_weight(model, p.valid, p.train_cfg.rerank_depth,
                                               p.train_cfg.amp_dtype)
        catalogue = MusicCatalogue.build(model, p.music_ids, p.source,
                                         autocast=p.train_cfg.amp_dtype)
    return FittedState(model, catalogue, result.history, result.best_epoch,
                       len(result.history), result.stopped, n_threads_used, result.returned,
                       weight, tried)
