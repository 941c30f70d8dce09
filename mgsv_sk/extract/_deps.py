"""Lazy imports of the optional ``media`` extra, each with an install hint."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]

#: import name -> the PyPI distribution that provides it
_PACKAGES = {
    "av": "av",
    "soundfile": "soundfile",
    "transformers": "transformers",
    "huggingface_hub": "huggingface_hub",
    "PIL": "pillow",
}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise an ImportError saying what needs it and how to install it.

    Examples
    --------
    >>> require("json", "a doctest").__name__
    'json'
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = _PACKAGES.get(module.split(".")[0], module.split(".")[0])
        raise ImportError(
            f"{purpose} needs the {package!r} package, which is not installed ({exc}); "
            "install the media extra: pip install 'mgsv-sk[media]'"
        ) from exc
