"""The HTTP service and its demo page (the ``serve`` extra: FastAPI, uvicorn,
python-multipart, prometheus-client; PyAV and soundfile for media). Torch-free.

    >>> from mgsv_sk.serve import create_app, ServeConfig          # doctest: +SKIP
    >>> app = create_app("bundle/", "catalogue/", config=ServeConfig(workers=2))
    >>> # uvicorn.run(app, host="127.0.0.1", port=8000), or: mgsv-sk serve bundle/ ...

:func:`create_app` builds the ASGI app (:mod:`.app`); :class:`ServeConfig` holds its limits
(:mod:`.config`); :func:`run` serves it with uvicorn, finishing in-flight requests on
SIGTERM (:mod:`.server`). See ``docs/serving.md``.
"""

from __future__ import annotations

try:
    import fastapi  # noqa: F401
    import prometheus_client  # noqa: F401
    import python_multipart  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(f"mgsv_sk.serve needs the serve extra ({exc}); install it with "
                      "pip install 'mgsv-sk[serve]'") from exc

from .app import create_app
from .config import ServeConfig
from .engine import ServedModel
from .server import run

__all__ = ["ServeConfig", "ServedModel", "create_app", "run"]
