"""The HTTP service, its demo page and the Open Inference Protocol over HTTP and gRPC (the
``serve`` extra: FastAPI, uvicorn, python-multipart, prometheus-client, pysimdjson, grpcio,
protobuf; PyAV and soundfile for media). Torch-free.

    >>> from mgsv_sk.serve import create_app, ServeConfig          # doctest: +SKIP
    >>> app = create_app("bundle/", "catalogue/", config=ServeConfig(workers=2))
    >>> # run(app, host="127.0.0.1", port=8000), or: mgsv-sk serve bundle/ ...

:func:`create_app` builds the ASGI app (:mod:`.app`) from one router per concern
(:mod:`.routes`), with ``grpc_address=`` the gRPC service beside it (:mod:`.grpc`);
:class:`ServeConfig` holds its limits (:mod:`.config`); :func:`run` serves it with uvicorn,
finishing in-flight requests on SIGTERM (:mod:`.server`) and closing connections that hold
nothing (:mod:`.connections`; ``uvicorn.run(app)`` alone would not). See
``docs/serving.md``.
"""

from __future__ import annotations

from mgsv_sk._extras import require

for _module in ("fastapi", "prometheus_client", "python_multipart", "simdjson"):
    require(_module, "mgsv_sk.serve")

from .app import create_app  # noqa: E402
from .config import ServeConfig  # noqa: E402
from .engine import ServedModel  # noqa: E402
from .server import run  # noqa: E402

__all__ = ["ServeConfig", "ServedModel", "create_app", "run"]
