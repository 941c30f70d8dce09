"""The fit loop: seeded, length-grouped batches, warm-up then a constant rate with an average
of the weights (or a cosine over ``max_epochs``), early stopping, history.

Kept apart from the estimator so the loop reads top to bottom; the estimator only turns
its flat hyper-parameters into a :class:`TrainConfig` and a model.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mgsv_sk.data.features import FeatureSource
from mgsv_sk.data.spans import temporal_iou
from mgsv_sk.evaluation.metrics import (
    grounding_report_from_iou,
    moment_recall_report,
    retrieval_ranks,
    retrieval_report,
)
from mgsv_sk.evaluation.scoring import SCORER_NAMES, scorer_value
from mgsv_sk.search.rerank import reranked

from ..infer.batched import ground_pairs, video_embeddings
from ..infer.catalogue import MusicCatalogue
from ..infer.device import Autocast, autocast_for
from ..nn.losses import LossWeights, made_losses
from ..nn.model import MaDe
from . import distributed as ddp
from ._averaging import WeightAverage
from ._batching import collate, length_grouped_batches, target_center_width
from ._memory import TrackMemory

__all__ = ["TrainConfig", "TrainResult", "Split", "fit_model", "validation_report"]

logger = logging.getLogger(__name__)

#: The cross-batch memory's negatives join from this epoch on. While the encoders are still
#: finding what ties a video to its track, hundreds of extra negatives slow that search
#: down: in the ``hook`` world a 6-epoch fit reached test R@1 0.29 with the memory from the
#: first step, 0.86 from the second epoch, 0.87 without one (``noisy``: 0.64, 0.63, 0.59).
MEMORY_FROM_EPOCH = 2


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one fit, built by the estimator from its parameters: the
    defaults are declared once in :mod:`mgsv_sk.train.parameters`, so every field is
    given here. ``amp_dtype`` is the one resolved precision (``bf16`` and
    ``mixed_precision`` resolved on the device once, by
    :func:`mgsv_sk.infer.device.resolve_precision`; None: float32)."""

    lr: float
    weight_decay: float
    batch_size: int
    max_epochs: int
    patience: int
    warmup_fraction: float
    lr_schedule: str  # "constant" (after warm-up) or "cosine" (to zero at max_epochs)
    average_halflife: float  # EMA of the weights, half-life in epochs (0: the raw weights)
    grad_clip: float
    memory_tracks: int  # cross-batch memory of recent tracks as extra negatives (0: none)
    early_stopping_metric: str
    moment_weight: float  # the re-ranking the validation ranks by (as inference does)
    rerank_depth: int
    seed: int
    verbose: int
    loss_weights: LossWeights
    device: str  # a resolved device: "cpu", "cuda:0", ...
    amp_dtype: torch.dtype | None  # the autocast dtype of training and validation


@dataclass
class Split:
    """Rows to train or validate on: ids, ground truth, the videos' lengths (seconds) and
    the feature source. ``distractors``: tracks that join a validation split's gallery
    (ranked against, never anyone's true track), so that retrieval is measured against a
    catalogue about as large as the ones users search."""

    video_ids: list[str]
    music_ids: list[str]
    start: np.ndarray
    end: np.ndarray
    duration: np.ndarray
    seconds: np.ndarray
    source: FeatureSource
    distractors: list[str] = field(default_factory=list)

    def gallery(self) -> list[str]:
        """The tracks retrieval ranks against: the split's own, then the distractors."""
        return list(dict.fromkeys([*self.music_ids, *self.distractors]))

    def __len__(self) -> int:
        return len(self.video_ids)

    def target_cw(self) -> np.ndarray:
        return target_center_width(self.start, self.end)


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    best_epoch: int
    best_score: float
    stopped: str  # "converged" (patience), "max_epochs" or "interrupted"
    returned: str = ""  # which weights the model holds, and why (``returned_weights_``)


#: Early stopping monitors any scorer of :mod:`mgsv_sk.evaluation.scoring` (its registry).
EARLY_STOPPING_METRICS = SCORER_NAMES

#: Early stopping judges an epoch by the monitored metric averaged over it and the epoch
#: before: one epoch's value on a validation split of a few hundred videos moves by about a
#: point of noise, and on single epochs the fit kept epochs up to 1.4 points of test R@1
#: below the best; on the two-epoch mean, within 0.6 points in every world
#: (``benchmarks/accuracy.py --curves 20``).
SMOOTHING_EPOCHS = 2


#: Among epochs whose (smoothed) validation value is within this many videos' worth of the
#: best (``NEAR_TIE_VIDEOS / n`` on a split of n videos: one video's rank-1 or IoU flip
#: moves a 0-1 metric by up to 1 / n), the fit keeps the latest: with weight averaging a
#: later epoch is the more trained model, and its grounding still improves after retrieval
#: has plateaued. Replayed on every world's curves (``benchmarks/accuracy.py --replay
#: accuracy_curves_schedules``): aligned keeps epoch 9 instead of 6 (test mIoU 0.946 ->
#: 0.957, R@1 0.987 -> 0.986), the 5-minute budget in crowded epoch 6 instead of 5, every
#: other choice unchanged; the epochs run do not change. Two videos' worth also moved
#: crowded's kept epoch, by 1.3 points of test R@1 down.
NEAR_TIE_VIDEOS = 1.0


def near_tie(n_videos: int) -> float:
    """The tolerance within which a validation split of ``n_videos`` calls two epochs tied
    (:data:`NEAR_TIE_VIDEOS` videos' worth of a 0-1 metric)."""
    return NEAR_TIE_VIDEOS / n_videos


class EarlyStopping:
    """The rule that picks the kept epoch: the ``SMOOTHING_EPOCHS``-epoch mean of the
    monitored value (an epoch stands for the window it ends), stopping after ``patience``
    epochs without improving its best; the kept epoch is the latest whose mean is within
    ``tolerance`` of the best (0: the best itself, the latest of ties)."""

    def __init__(self, patience: int, tolerance: float = 0.0) -> None:
        self.patience, self.tolerance = patience, float(tolerance)
        self.values: list[float] = []
        self.best_score, self.best_epoch, self.stale = -math.inf, 0, 0

    def update(self, value: float) -> bool:
        """Record one epoch's value; True when this epoch is the new kept one."""
        self.values.append(value)
        score = float(np.mean(self.values[-SMOOTHING_EPOCHS:]))
        improved = score > self.best_score + 1e-9
        if improved:
            self.best_score, self.stale = score, 0
        else:
            self.stale += 1
        if improved or score >= self.best_score - self.tolerance:
            self.best_epoch = len(self.values)
            return True
        return False

    @property
    def exhausted(self) -> bool:
        return self.stale >= self.patience


@contextmanager
def evaluating(model: MaDe) -> Iterator[None]:
    """The model in eval mode for the block, its previous mode again after it."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def split_scores(model: MaDe, split: Split, autocast: Autocast = None
                 ) -> tuple[MusicCatalogue, np.ndarray]:
    """The split's gallery encoded (:meth:`Split.gallery`) and the retrieval scores of its
    videos against it, (n_videos, n_gallery): what inference ranks by, before re-ranking.
    The model must be in eval mode (:func:`evaluating`)."""
    catalogue = MusicCatalogue.build(model, split.gallery(), split.source, autocast=autocast)
    emb = video_embeddings(model, split.video_ids, split.source, autocast=autocast)
    return catalogue, catalogue.scores(model, emb)


def validation_report(model: MaDe, split: Split, autocast: Autocast = None,
                      moment_weight: float = 0.0, rerank_depth: int = 10) -> dict[str, float]:
    """The protocol's metrics on a held-out split, computed on the model's device;
    ``autocast``: False, True (bfloat16) or an autocast dtype.

    Retrieval ranks every video against :meth:`Split.gallery` (its tracks and the
    distractors; ``gallery_tracks`` in the report, and the split's ``videos``) by the same
    scores inference ranks by (re-ranked by the moment score with ``moment_weight > 0``);
    grounding is on each video's true track.
    """
    with evaluating(model):
        catalogue, table = split_scores(model, split, autocast)
        rows = catalogue.positions(split.music_ids)

        def moment_scores(video_rows: np.ndarray, track_rows: np.ndarray) -> np.ndarray:
            _, _, moment = ground_pairs(model, [split.video_ids[i] for i in video_rows],
                                        track_rows, catalogue, split.source,
                                        split.seconds[video_rows], autocast=autocast)
            return moment[:, 0]

        scores = reranked(table, moment_weight, rerank_depth, moment_scores)
        ranks = retrieval_ranks(scores, np.asarray(catalogue.ids, dtype=object),
                                np.asarray(split.music_ids, dtype=object))
        start, end, _ = ground_pairs(model, split.video_ids, rows, catalogue, split.source,
                                     split.seconds, autocast=autocast)
        start, end = start[:, 0], end[:, 0]
        ious = temporal_iou(np.column_stack([start, end]),
                            np.column_stack([split.start, split.end]), split.duration)
    report = grounding_report_from_iou(ious)
    report.update(retrieval_report(ranks))
    report.update(moment_recall_report(ranks, ious))
    report["gallery_tracks"] = float(len(catalogue.ids))
    report["videos"] = float(len(split))
    return report


#: The learning-rate schedules after the linear warm-up (``lr_schedule``).
LR_SCHEDULES = ("constant", "cosine")


def _schedule(total_steps: int, warmup_fraction: float,
              kind: str = "cosine") -> Callable[[int], float]:
    warmup = max(1, int(round(total_steps * warmup_fraction)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _progress(total: int, desc: str, verbose: int) -> Any:
    if verbose <= 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", leave=verbose > 1)


def _train_epoch(
    net: torch.nn.Module,
    split: Split,
    lengths: np.ndarray,
    targets: np.ndarray,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    scaler: torch.amp.GradScaler,
    cfg: TrainConfig,
    rng: np.random.Generator,
    epoch: int,
    dist: ddp.DistContext | None = None,
    memory: TrackMemory | None = None,
    average: WeightAverage | None = None,
) -> dict[str, float]:
    """One epoch; ``net`` is the model, or its DistributedDataParallel wrapper when
    ``dist`` is given (this rank then trains on its shard of the epoch's batches);
    ``memory``: the fit's cross-batch track memory (each rank keeps its own);
    ``average``: the weight average, updated after every step."""
    net.train()
    device = torch.device(cfg.device)
    sums: dict[str, float] = {}
    seen = 0
    batches = length_grouped_batches(lengths, cfg.batch_size, rng)
    if dist is not None:
        batches = ddp.shard_batches(batches, dist.rank, dist.world_size)
    verbose = cfg.verbose if dist is None or dist.is_main else 0
    bar = _progress(len(batches), f"epoch {epoch}", verbose)
    for rows in batches:
        batch = collate(rows, split.video_ids, split.music_ids, split.source, split.seconds,
                        targets).to(device)
        assert batch.target_cw is not None
        with autocast_for(device, cfg.amp_dtype):
            out = net(batch.video, batch.video_mask, batch.music, batch.music_mask,
                      batch.music_index, batch.video_seconds,
                      memory=None if memory is None else memory.negatives(batch.music_ids))
        terms = made_losses(out, batch.music_index, batch.target_cw, cfg.loss_weights,
                            batch.video_seconds)
        finite = bool(torch.isfinite(terms.total))
        if dist is not None:  # raise on every rank or on none: a lone rank would hang DDP
            finite = ddp.all_true(finite, dist, device)
        if not finite:
            raise FloatingPointError(
                f"training loss became non-finite ({float(terms.total)} on this process) at "
                f"epoch {epoch}; lower lr (or use mixed_precision='fp32') and check the "
                "features for extreme values"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(terms.total).backward()  # DDP all-reduces the gradients here
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        scaler.step(optimizer)  # a plain optimizer.step() unless float16 loss scaling
        scaler.update()
        scheduler.step()
        if average is not None:
            average.update()
        if memory is not None:
            memory.push(out.music, batch.music_ids)
        n = len(rows)
        seen += n
        for name, value in terms.as_floats().items():
            sums[name] = sums.get(name, 0.0) + value * n
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{sums['total'] / seen:.3f}")
    if bar is not None:
        bar.close()
    if dist is not None:  # the same history on every rank
        totals = ddp.sum_over_ranks({**sums, "\x00seen": float(seen)}, dist, device)
        seen = int(totals.pop("\x00seen"))
        sums = totals
    return {f"train_{k}": v / max(seen, 1) for k, v in sums.items()}


def _validate(
    model: MaDe, valid: Split, cfg: TrainConfig, dist: ddp.DistContext | None
) -> dict[str, float]:
    """Validation metrics: computed by rank 0 and broadcast, so that every rank takes the
    same early-stopping decisions."""
    def report_of() -> dict[str, float]:
        return validation_report(model, valid, cfg.amp_dtype, cfg.moment_weight,
                                 cfg.rerank_depth)

    if dist is None:
        return report_of()
    report = report_of() if dist.is_main else None
    report = ddp.broadcast_object(report, dist, torch.device(cfg.device))
    assert report is not None
    return report


def _snapshot(model: MaDe) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights (no GPU memory held for the best epoch)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def fit_model(
    model: MaDe,
    train: Split,
    valid: Split | None,
    cfg: TrainConfig,
    dist: ddp.DistContext | None = None,
    evals: Sequence[tuple[str, Split]] = (),
) -> TrainResult:
    """Train ``model`` in place on ``cfg.device``; on return it holds the best weights seen.

    ``evals``: named splits also evaluated after every epoch (``{name}_R@1``, ... in the
    history), for the record only: early stopping reads the validation split alone.

    With a validation split the model is evaluated after each epoch and training stops
    after ``patience`` epochs without improving ``early_stopping_metric`` (its two-epoch
    mean, :class:`EarlyStopping`); without one it
    runs ``max_epochs``. A KeyboardInterrupt after at least one epoch ends training early
    with the best weights so far (``stopped="interrupted"``).

    With ``dist`` (an initialised process group, see :mod:`mgsv_sk.train.distributed`) the model
    is trained data-parallel: every rank must call this with the same splits and seed;
    each takes a disjoint shard of every epoch's batches, gradients are averaged by DDP,
    validation runs on rank 0 and its metrics are broadcast, and all ranks return
    identical weights and history.
    """
    device = torch.device(cfg.device)
    model.to(device)
    rng = np.random.default_rng(cfg.seed)
    lengths = train.source.video_lengths(train.video_ids) + train.source.music_lengths(
        train.music_ids)
    targets = train.target_cw().astype(np.float32)
    world = 1 if dist is None else dist.world_size
    epoch_steps = math.ceil(math.ceil(len(train) / cfg.batch_size) / world)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _schedule(cfg.max_epochs * epoch_steps, cfg.warmup_fraction, cfg.lr_schedule))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp_dtype == torch.float16)
    average = (WeightAverage(model, cfg.average_halflife * epoch_steps)
               if cfg.average_halflife > 0 else None)
    net: torch.nn.Module = model
    if dist is not None:
        ddp.check_same(ddp.data_fingerprint(train.video_ids, train.music_ids,
                                            [] if valid is None else valid.video_ids),
                       "training data", dist, device)
        net = ddp.wrap_model(model, device, dist)
    main = dist is None or dist.is_main

    history: list[dict[str, float]] = []
    best_state: dict[str, torch.Tensor] | None = None
    stopping = EarlyStopping(cfg.patience, near_tie(len(valid)) if valid is not None else 0.0)
    memory = TrackMemory(cfg.memory_tracks) if cfg.memory_tracks else None
    stopped = "max_epochs"
    for epoch in range(1, cfg.max_epochs + 1):
        tic = time.perf_counter()
        try:
            row: dict[str, float] = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
            row.update(_train_epoch(net, train, lengths, targets, optimizer, scheduler, scaler,
                                    cfg, rng, epoch, dist,
                                    memory if epoch >= MEMORY_FROM_EPOCH else None, average))
            with _averaged(average):  # what is validated is what would be returned
                if valid is not None:
                    report = _validate(model, valid, cfg, dist)
                    row.update({f"val_{k}": v for k, v in report.items()})
                evals_tic = time.perf_counter()
                for name, split in evals:
                    row.update({f"{name}_{k}": v
                                for k, v in _validate(model, split, cfg, dist).items()})
                if evals:  # the record's own cost, apart from the fit's
                    row["eval_seconds"] = time.perf_counter() - evals_tic
                row["seconds"] = time.perf_counter() - tic
                history.append(row)
                if stopping.update(_monitored(row, cfg.early_stopping_metric, valid is not None)):
                    best_state = _snapshot(model)
        except KeyboardInterrupt:
            if best_state is None and not history:
                raise
            logger.warning("fit interrupted during epoch %d; keeping the best weights so far",
                           epoch)
            stopped = "interrupted"
            break
        if main:
            logger.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in row.items()})
        if valid is not None and stopping.exhausted:
            stopped = "converged"
            break
    del net  # drop the DDP wrapper (and its gradient hooks); ``model`` is the module
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    returned = _returned(cfg, stopping.best_epoch, valid is not None, stopped, len(history),
                         stopping.tolerance)
    for row in history:
        row["returned"] = float(row["epoch"] == stopping.best_epoch)
    return TrainResult(history, stopping.best_epoch, stopping.best_score, stopped, returned)


@contextmanager
def _averaged(average: WeightAverage | None) -> Iterator[None]:
    """The weight average in the model for the block, the live weights again after it."""
    if average is None:
        yield
        return
    average.swap()
    try:
        yield
    finally:
        average.swap()


def _returned(cfg: TrainConfig, epoch: int, has_valid: bool, stopped: str,
              epochs_run: int, tolerance: float = 0.0) -> str:
    """The sentence ``returned_weights_`` holds: which weights, and why those."""
    weights = (f"the average of the weights (EMA, half-life {cfg.average_halflife:g} epochs) "
               f"at the end of epoch {epoch}" if cfg.average_halflife > 0
               else f"the weights at the end of epoch {epoch}")
    if not has_valid:
        why = "the last epoch (no validation split)"
    else:
        why = (f"the latest epoch whose {SMOOTHING_EPOCHS}-epoch mean of validation "
               f"{cfg.early_stopping_metric} is within {tolerance:.4g} of the best (a near "
               f"tie: {NEAR_TIE_VIDEOS:g} video's worth of the validation split)")
    ended = {"converged": f"stopped after {cfg.patience} epochs without improvement",
             "max_epochs": f"ran max_epochs={cfg.max_epochs}",
             "interrupted": "interrupted"}[stopped]
    return f"{weights}: {why}; {ended} ({epochs_run} epochs run)"


def _monitored(row: dict[str, float], metric: str, has_valid: bool) -> float:
    """Greater-is-better value of the early-stopping metric in an epoch's row."""
    if not has_valid:
        return row["epoch"]  # no held-out data: keep the final weights
    return scorer_value(row, metric, prefix="val_")
