"""``MGSVGrounder``'s hyper-parameters, each declared once: default, constraints,
documentation and the config field it feeds (``model``: :class:`mgsv_sk.nn.MaDeConfig`,
``train``: :class:`TrainConfig`, ``loss``: :class:`mgsv_sk.nn.LossWeights`).

The estimator's signature, ``_parameter_constraints``, docstring and the table of
``docs/estimator.md`` are generated from :data:`GROUNDER_PARAMETERS`
(:func:`mgsv_sk.grounding.hyperparameters.declared`), and :mod:`mgsv_sk.train.fitting`
builds the configs from its routes. Adding a hyper-parameter is one :class:`Hyper` here
(plus its field in the config it feeds), then ``MGSV_UPDATE_DOCS=1 pytest
tests/test_hyperparameters.py`` rewrites the documentation's table.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any

import torch

from mgsv_sk.evaluation.scoring import SCORER_NAMES
from mgsv_sk.grounding.hyperparameters import Declaration, Hyper, HyperGroup
from mgsv_sk.grounding.validation import Interval, StrOptions
from mgsv_sk.infer.device import MIXED_PRECISION
from mgsv_sk.nn.config import DETECTORS
from mgsv_sk.train._training import LR_SCHEDULES

__all__ = ["GROUNDER_PARAMETERS"]


def _at_least(low: int) -> list[Any]:
    return [Interval(Integral, low, None, closed="left")]


_NON_NEGATIVE = [Interval(Real, 0, None, closed="left")]
_POSITIVE = [Interval(Real, 0, None, closed="neither")]
_FRACTION = [Interval(Real, 0, 1, closed="left")]


def _names(value: Any) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _group(params: list[Hyper], type_: str, doc: str, summary: str) -> HyperGroup:
    return HyperGroup(tuple(params), type_, doc, summary)


def _int(name: str, default: int, low: int, to: str | None = None) -> Hyper:
    return Hyper(name, default, _at_least(low), "int", to, int)


def _weight(name: str, default: float, field: str) -> Hyper:
    return Hyper(name, default, _NON_NEGATIVE, "float", f"loss.{field}")


def _dropout(name: str, default: float) -> Hyper:
    return Hyper(name, default, _FRACTION, "float", "model")


GROUNDER_PARAMETERS = Declaration((
    _group([Hyper("features", None, "no_validation")], "path or FeatureSource, optional",
           "Default feature source (a packed store, an MGSV-EC feature tree or in-memory "
           "arrays); every method also takes ``features=``.",
           "default feature source (packed store, release tree, in-memory arrays); every "
           "method also takes `features=`"),
    _group([Hyper("detector", "window", [StrOptions(set(DETECTORS))], "str", "model")],
           '{"window", "detr"}',
           'The moment head. "window" (default) scores every candidate window of the track '
           "(a start every 1.25 s, the video's length, refined offsets; see "
           ":mod:`mgsv_sk.nn.window`) and is trained against the batch's other tracks, so "
           "its ``moment_score`` says whether the track holds a fitting moment; \"detr\" is "
           "the paper's single-query DETR detector (reproduces the paper; its "
           "``moment_score`` is the foreground probability, trained on positives only).",
           'the moment head: `"window"` or the paper\'s `"detr"`'),
    _group([_int("d_model", 256, 2, "model"), _int("n_heads", 8, 1, "model"),
            _int("temporal_layers", 1, 0, "model"), _int("encoder_layers", 2, 0, "model"),
            _int("decoder_layers", 6, 1, "model"), _int("ffn_mult", 4, 1, "model")], "int",
           "Architecture (paper: 256, 8, 1, 2, 6, 4; the encoder / decoder layers are "
           "DETR's).",
           "architecture (the paper's; encoder / decoder layers are DETR's)"),
    _group([_dropout("temporal_dropout", 0.1), _dropout("input_dropout", 0.0),
            _dropout("detector_dropout", 0.1)], "float",
           "Dropout of the temporal self-attention (0.1; the paper's 0.8 is for 100-epoch "
           "training), of the input features in training, and of the DETR detector (0.1).",
           "dropout (paper: temporal 0.8, for 100 epochs)"),
    _group([Hyper("retrieval_scores", ("dual", "xpool"), [list, tuple, str],
                  "tuple[str, ...]", "model", _names)], 'tuple of {"dual", "xpool"}',
           "Retrieval scores trained and summed at inference (paper: both).",
           "retrieval scores trained and summed"),
    _group([Hyper("xpool_top_k", None, [*_at_least(1), None], "int | None")], "int, optional",
           "At inference, compute the X-Pool score only for each video's ``xpool_top_k`` "
           "best tracks by dual score (two-stage search for large catalogues); None: every "
           "track.",
           "two-stage search: X-Pool only for each video's best K tracks by dual score"),
    _group([Hyper("moment_weight", "auto", [*_NON_NEGATIVE, StrOptions({"auto"})],
                  "float | str"),
            _int("rerank_depth", 10, 1, "train")], 'float or "auto", int',
           "Ranking re-ranks each video's best ``rerank_depth`` tracks by ``score + "
           "moment_weight * logit(moment_score)``; \"auto\" with the window head is the "
           "weight the fit chooses on its validation split (the best validation R@1 of 0, "
           "0.025, 0.05, 0.1, 0.2, 0.5, 1, 2: ``moment_weight_``; 0.05 without a "
           "validation split), with DETR 0; 0 gives the plain retrieval order.",
           "re-ranking by the moment score (below)"),
    _group([_weight("l1_weight", 4.0, "l1"), _weight("giou_weight", 1.0, "giou"),
            _weight("fg_weight", 0.8, "fg"), _weight("dual_weight", 1.0, "dual"),
            _weight("xpool_weight", 1.0, "xpool")], "float",
           "Loss weights (paper: 4, 1, 0.8, 1, 1; l1, giou and fg are DETR's).",
           "loss weights (the paper's; l1, giou, fg are DETR's)"),
    _group([_weight("window_weight", 1.0, "window"),
            _weight("boundary_weight", 1.0, "boundary"),
            _weight("match_weight", 1.0, "match")], "float",
           "Window head loss weights: the cross-entropy over candidate windows, the L1 "
           "refinement of their starts, and the moment score's cross-entropy against the "
           "batch's other tracks (0 disables the negatives' term).",
           "window head losses: candidates' cross-entropy, L1 start refinement, moment "
           "score against other tracks"),
    _group([_weight("snippet_weight", 1.0, "snippet")], "float",
           "Weight of the per-snippet evidence loss (an addition to the paper; 0 disables "
           "it).",
           "per-snippet evidence loss (an addition)"),
    _group([Hyper("aux_loss", True, ["boolean"], "bool", "loss.aux")], "bool",
           "Detection losses on every decoder layer, not just the last.",
           "losses on every decoder layer"),
    _group([Hyper("temperature_init", 0.03, _POSITIVE, "float", "model")], "float",
           "Initial InfoNCE temperature (learned; paper 0.03).",
           "initial InfoNCE temperature (learned)"),
    _group([Hyper("lr", 1e-3, _POSITIVE, "float", "train"),
            Hyper("weight_decay", 0.0, _NON_NEGATIVE, "float", "train"),
            Hyper("warmup_fraction", 0.02, [Interval(Real, 0, 1, closed="both")], "float",
                  "train"),
            Hyper("grad_clip", 1.0, _NON_NEGATIVE, "float", "train")], "float",
           "AdamW, linear warm-up over this fraction of the steps (of ``max_epochs``), then "
           "``lr_schedule``; gradient norm clipping (1e-3, 0, 0.02, 1.0; the paper: 3e-4 "
           "with batch 512 for up to 100 epochs). The paper's configuration is "
           "``detector=\"detr\", temporal_dropout=0.8, lr=3e-4, batch_size=512``; the "
           "defaults are what learns in minutes on a CPU (measured in "
           "``benchmarks/accuracy.py``).",
           "AdamW, linear warm-up then `lr_schedule` (paper: lr 3e-4)"),
    _group([Hyper("lr_schedule", "constant", [StrOptions(set(LR_SCHEDULES))], "str",
                  "train")], '{"constant", "cosine"}',
           "The rate after warm-up: \"constant\" (default) keeps the peak rate until the fit "
           "ends, so no epoch depends on ``max_epochs`` and the weight average "
           "(``average_halflife``) does the annealing; \"cosine\" decays it to zero at "
           "``max_epochs`` (the schedule before: an epoch that early stopping kept early was "
           "never annealed).",
           '`"constant"` after warm-up (the weight average anneals), or `"cosine"` to zero '
           "at `max_epochs`"),
    _group([Hyper("average_halflife", 1.0, _NON_NEGATIVE, "float", "train", float)], "float",
           "The fit validates, keeps and returns an exponential moving average of the "
           "weights (half-life in epochs; until it has seen that many epochs, the uniform "
           "mean of the steps so far), so whichever epoch early stopping keeps is a "
           "finished model; 0 returns the raw weights. ``returned_weights_`` says which "
           "weights were returned and why.",
           "EMA of the weights, validated, kept and returned (half-life in epochs); 0: the "
           "raw weights"),
    _group([_int("batch_size", 64, 1, "train")], "int",
           "Videos per training batch (paper 512; 64 gives a CPU fit twice the optimiser "
           "steps per epoch of 128, which the first epochs need: measured in "
           "``benchmarks/accuracy.py``). Per process in data-parallel training "
           "(:mod:`mgsv_sk.train.distributed`): a step then averages ``batch_size * "
           "world_size`` videos, and each process's InfoNCE uses its own batch (and its own "
           "memory, ``memory_tracks``).",
           "per process under DDP ([gpu.md](gpu.md)); paper: batch 512"),
    _group([_int("memory_tracks", 1024, 0, "train")], "int",
           "Cross-batch memory: the encodings of the last this many distinct tracks of "
           "earlier batches join each batch's video-to-music InfoNCE as negatives "
           "(detached, so nothing is encoded twice; the dual score against all of them, "
           "X-Pool against as many as the batch has tracks, those closest to its videos). A "
           "batch of 64 offers about 60 tracks. Consulted from the second epoch (from the "
           "first step it slowed the early epochs of ``benchmarks/accuracy.py``'s ``hook`` "
           "world). At the 5-minute budget 1,024 raised test R@1 on unseen tracks by 4 "
           "points in the ``noisy`` world and 1 in ``aligned`` and ``signature``, cost 1 in "
           "``hook``, and up to 6 % more fit time. 0 disables it.",
           "cross-batch memory: recent batches' tracks as extra InfoNCE negatives (below); "
           "0 disables it"),
    _group([_int("max_epochs", 20, 1, "train"), _int("patience", 3, 1, "train")], "int",
           "Epoch budget and early-stopping patience (epochs without improvement, judged "
           "on the monitored metric's mean over two consecutive epochs). 20 and 3: replayed "
           "on the 20-epoch curves of ``benchmarks/accuracy.py``, patience 3 keeps the same "
           "epoch as 5 in every world and stops 2 epochs sooner (2 lost 2 points of R@1 in "
           "``aligned``); with the weight average the validation curve is smoother still "
           "(``noisy``: val/test Spearman 0.78, was 0.67).",
           "epoch budget and early-stopping patience (below)"),
    _group([Hyper("validation_fraction", 0.1, _FRACTION, "float")], "float",
           "Share of the training tracks held out (grouped by ``music_id``) for early "
           "stopping; 0 trains ``max_epochs`` on everything.",
           "held-out tracks for early stopping (below); 0 trains `max_epochs` on "
           "everything"),
    _group([Hyper("validation_gallery", "train",
                  [StrOptions({"train", "held_out"}), "array-like"])],
           '{"train", "held_out"} or list of str',
           "The tracks each held-out video is ranked against besides the held-out ones: the "
           "training tracks (\"train\"), none (\"held_out\"), or these track ids of the "
           "feature source.",
           "distractors of the validation ranking (below)"),
    _group([Hyper("early_stopping_metric", "mrr", [StrOptions(set(SCORER_NAMES))], "str",
                  "train")], "str",
           "Validation metric to maximise, a scorer name such as \"mrr\" (the default: the "
           "mean reciprocal rank of the held-out videos among held-out and training "
           "tracks, which falls when retrieval on new tracks falls and, being continuous, "
           "is the least noisy of the protocol's measures on a small validation split), "
           "\"miou\", \"r1\", \"mor10@0.5\".",
           "the metric early stopping maximises (below)"),
    _group([Hyper("bf16", False, ["boolean"], "bool")], "bool",
           "Shorthand for ``mixed_precision=\"bf16\"``: bfloat16 autocast, on the CPU too "
           "(faster where the CPU supports it; see the README for its measured accuracy "
           "effect).",
           "bfloat16 autocast ([gpu.md](gpu.md))"),
    _group([Hyper("mixed_precision", "auto", [StrOptions(set(MIXED_PRECISION))], "str")],
           '{"auto", "bf16", "fp16", "fp32"}',
           "Autocast precision of training and inference. \"auto\": float32 on the CPU; on "
           "a GPU bfloat16 where it is supported (Ampere and later), else float16 with loss "
           "scaling (``torch.amp.GradScaler``). \"fp16\" is for CUDA only. Attention "
           "softmax, retrieval scores and losses stay float32 in every mode.",
           "autocast precision ([gpu.md](gpu.md))"),
    _group([Hyper("device", "cpu", [str, torch.device], "str | torch.device")],
           "str or torch.device",
           "Where the model is trained and run: \"cpu\" (default), \"cuda\", \"cuda:N\", or "
           "\"auto\" (CUDA when ``torch.cuda.is_available()``, else the CPU). Inputs are "
           "moved to it batch by batch and every result comes back as numpy. A model "
           "fitted on a GPU pickles and saves with CPU weights and, loaded where "
           "``device`` is unavailable, runs on the CPU. In a ``torch.distributed`` run "
           "(see :mod:`mgsv_sk.train.distributed`) \"cuda\" means ``cuda:LOCAL_RANK``.",
           "training and inference device ([gpu.md](gpu.md))"),
    _group([Hyper("n_threads", None, [*_at_least(1), None], "int | None")], "int, optional",
           "torch intra-op threads during fit/predict; None keeps torch's setting.",
           "torch threads"),
    _group([Hyper("random_state", None, ["random_state"], "int | None")],
           "int, RandomState or None",
           "Seed of initialisation, batching and dropout (a RandomState gives one draw as "
           "the seed). Equal int seeds give identical models on the same machine with "
           "``n_threads=1``; with more threads, torch's parallel reductions may change the "
           "last bits (predictions then agree to about 1e-4, see the README).",
           "seed"),
    _group([Hyper("verbose", 0, ["verbose"], "int", "train")], "int",
           "0 silent; 1 progress bars (one per training epoch, and over the videos of "
           "``predict`` / ``rank`` / ``snippet_evidence``) and the epoch summary in the "
           "log.",
           "progress bars"),
))
