"""The optional dependencies: which extra of ``pyproject.toml`` brings each module, and the
one error that says what needs it and how to install it.

Standard library only, so any layer (the torch-free runtime included) may use it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "install_hint", "require"]

#: top-level import name -> (PyPI distribution, the extra that installs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "torch": ("torch", "train"),
    "onnx": ("onnx", "train"),
    "matplotlib": ("matplotlib", "plot"),
    "dask": ("dask", "dask"),
    "distributed": ("distributed", "dask"),
    "av": ("av", "media"),
    "soundfile": ("soundfile", "media"),
    "PIL": ("pillow", "media"),
    "transformers": ("transformers", "media"),
    "huggingface_hub": ("huggingface_hub", "media"),
    "faiss": ("faiss-cpu", "ann"),
    "fastapi": ("fastapi", "serve"),
    "uvicorn": ("uvicorn", "serve"),
    "python_multipart": ("python-multipart", "serve"),
    "prometheus_client": ("prometheus-client", "serve"),
    "simdjson": ("pysimdjson", "serve"),
    "grpc": ("grpcio", "serve"),
    "google": ("protobuf", "serve"),
    "ray": ("ray[serve]", "replicas"),
}


def install_hint(extra: str) -> str:
    """The command that installs ``extra``: ``pip install "mgsv-sk[extra]"``."""
    return f'pip install "mgsv-sk[{extra}]"'


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise an ImportError naming ``purpose``, the missing package and
    the extra that brings it.

    Examples
    --------
    >>> require("json", "a doctest").__name__
    'json'
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        package, extra = EXTRAS.get(top, (top, None))
        fix = (f"install the {extra} extra: {install_hint(extra)}" if extra
               else f"install it: pip install {package}")
        raise ImportError(f"{purpose} needs the {package!r} package, which is not installed "
                          f"({exc}); {fix}") from exc
