"""Where a MaDe model runs and in which precision: device resolution and autocast.

The estimator's ``device`` parameter is "cpu", "cuda", "cuda:N", "auto" (CUDA when
available, else the CPU) or a ``torch.device``; ``mixed_precision`` is "auto", "bf16",
"fp16" or "fp32" (``bf16=True`` is a shorthand for "bf16"). Both are resolved here, once
per call, into a concrete ``torch.device`` and an autocast dtype.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from mgsv_sk.errors import InvalidInputError, InvalidTypeError

__all__ = [
    "torch_threads",
    "MIXED_PRECISION",
    "Autocast",
    "Precision",
    "autocast_for",
    "model_device",
    "resolve_device",
    "resolve_precision",
    "rng_devices",
]

logger = logging.getLogger(__name__)

#: Accepted values of the estimator's ``mixed_precision`` parameter.
MIXED_PRECISION = ("auto", "bf16", "fp16", "fp32")

#: The one representation of a resolved precision that fit and inference pass around: the
#: autocast dtype, or None for float32 (``resolve_precision(...).dtype``).
Autocast = torch.dtype | None

_DTYPES: dict[str, torch.dtype | None] = {
    "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None,
}
_DEVICE_HELP = "device must be 'cpu', 'cuda', 'cuda:N', 'auto' or a torch.device"


def _no_cuda_reason() -> str:
    if torch.version.cuda is None:
        return (f"this torch ({torch.__version__}) is a CPU-only build: install a CUDA build "
                "of torch")
    return "no CUDA GPU is visible: check the driver and CUDA_VISIBLE_DEVICES"


def resolve_device(device: Any, local_rank: int | None = None) -> torch.device:
    """The concrete ``torch.device`` of a ``device`` parameter (CUDA always with an index).

    "auto" is CUDA when ``torch.cuda.is_available()``, else the CPU. "cuda" without an
    index is ``cuda:local_rank`` in a distributed run (one GPU per process), else the
    current CUDA device. Raises ValueError naming the fix.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if isinstance(device, str):
        text = device.strip().lower()
        if text == "auto":
            text = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            dev = torch.device(text)
        except RuntimeError:
            raise InvalidInputError(f"{_DEVICE_HELP}, got {device!r}") from None
    elif isinstance(device, torch.device):
        dev = device
    else:
        raise InvalidInputError(f"{_DEVICE_HELP}, got {device!r} of type {type(device).__name__}")
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise InvalidInputError(f"device type {dev.type!r} is not supported (device={device!r}); "
                         "use 'cpu', 'cuda', 'cuda:N' or 'auto'")
    if not torch.cuda.is_available():
        raise InvalidInputError(
            f"device={device!r} but torch.cuda.is_available() is False ({_no_cuda_reason()}); "
            "or pass device='cpu', or device='auto' to use a GPU only when there is one"
        )
    count = torch.cuda.device_count()
    index = dev.index
    if index is None:
        index = local_rank if local_rank is not None else torch.cuda.current_device()
    if not 0 <= index < count:
        fix = ("launch at most that many processes per machine (torchrun --nproc_per_node)"
               if dev.index is None and local_rank is not None
               else f"use an index in [0, {count})")
        raise InvalidInputError(f"device={device!r} resolves to cuda:{index} but only {count} CUDA "
                         f"device(s) are visible; {fix}")
    return torch.device("cuda", index)


@dataclass(frozen=True)
class Precision:
    """Resolved mixed precision: the autocast dtype on a device type (None: float32)."""

    device_type: str
    dtype: torch.dtype | None

    @property
    def name(self) -> str:
        if self.dtype == torch.bfloat16:
            return "bf16"
        return "fp16" if self.dtype == torch.float16 else "fp32"

    @property
    def grad_scaling(self) -> bool:
        """float16 needs loss scaling (torch.amp.GradScaler); bfloat16 does not."""
        return self.dtype == torch.float16

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.dtype or torch.bfloat16,
                              enabled=self.dtype is not None)


def _cuda_bf16(device: torch.device) -> bool:
    with torch.cuda.device(device):
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def resolve_precision(
    device: torch.device, mixed_precision: str = "auto", bf16: bool = False, strict: bool = True
) -> Precision:
    """The autocast dtype of ``mixed_precision`` (and the ``bf16`` shorthand) on ``device``.

    "auto": float32 on the CPU; on CUDA bfloat16 where the GPU supports it (Ampere and
    later), else float16 with loss scaling. "bf16" / "fp16" / "fp32" force one. float16 is
    CUDA only. With ``strict=False`` (inference on a model that may have been fitted
    elsewhere) an unavailable choice falls back to float32 instead of raising.

    >>> resolve_precision(torch.device("cpu")).name
    'fp32'
    >>> resolve_precision(torch.device("cpu"), bf16=True).name
    'bf16'
    """
    if mixed_precision not in MIXED_PRECISION:
        raise InvalidInputError(f"mixed_precision must be one of {MIXED_PRECISION}, "
                         f"got {mixed_precision!r}")
    if bf16 and mixed_precision in ("fp16", "fp32"):
        raise InvalidInputError(f"bf16=True contradicts mixed_precision={mixed_precision!r}: "
                                f"bf16=True "
                         "is a shorthand for mixed_precision='bf16'; set only one of them")
    choice = "bf16" if bf16 else mixed_precision
    if device.type == "cpu":
        if choice == "fp16":
            if strict:
                raise InvalidInputError("mixed_precision='fp16' needs a CUDA device (float16 "
                                        "with loss "
                                 "scaling); on the CPU use 'bf16' or 'fp32'")
            choice = "fp32"
        elif choice == "auto":
            choice = "fp32"
    elif choice in ("auto", "bf16") and not _cuda_bf16(device):
        if choice == "bf16" and strict:
            raise InvalidInputError(f"{torch.cuda.get_device_name(device)} does not support "
                                    f"bfloat16; "
                             "use mixed_precision='fp16' or 'auto' (float16 with loss scaling)")
        choice = "fp16" if choice == "auto" else "fp32"
    elif choice == "auto":
        choice = "bf16"
    return Precision(device.type, _DTYPES[choice])


def autocast_for(device: torch.device, autocast: Autocast) -> torch.autocast:
    """Autocast context on ``device`` in dtype ``autocast`` (None: off, float32)."""
    if autocast is not None and not isinstance(autocast, torch.dtype):
        raise InvalidTypeError(f"autocast must be a torch dtype or None (float32), got "
                               f"{autocast!r}; "
                        "resolve a precision with resolve_precision(device, ...).dtype")
    return Precision(device.type, autocast).autocast()


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's (first) parameter."""
    return next(model.parameters()).device


def rng_devices(device: torch.device) -> list[int]:
    """CUDA devices whose RNG ``torch.random.fork_rng`` must save for work on ``device``."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


_THREADS_LOCK = threading.Lock()
_threads_state = {"depth": 0, "saved": 0}


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` intra-op threads (None: leave torch's setting, which joblib's
    workers already cap at cores / jobs), restoring the previous count after.

    Reentrant and thread-safe: torch's thread count is process-wide, so concurrent calls
    (threads predicting at once) share one saved count, restored when the last leaves;
    a save/restore per call would let interleaved calls leave the wrong count behind.
    """
    if n is None:
        yield
        return
    with _THREADS_LOCK:
        if _threads_state["depth"] == 0:
            _threads_state["saved"] = torch.get_num_threads()
        _threads_state["depth"] += 1
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _threads_state["depth"] -= 1
            if _threads_state["depth"] == 0:
                torch.set_num_threads(_threads_state["saved"])
