"""The HTTP service, its demo page and the Open Inference Protocol over HTTP and gRPC (the
``serve`` extra: FastAPI, uvicorn, python-multipart, prometheus-client, pysimdjson, grpcio,
protobuf; PyAV and soundfile for media). Torch-free.

    >>> from mgsv_sk.serve import create_app, ServeConfig          # doctest: +SKIP
    >>> app = create_app("bundle/", "catalogue/", config=ServeConfig(workers=2))
    >>> # run(app, host="127.0.0.1", port=8000), or: mgsv-sk serve bundle/ ...

:func:`create_app` builds the ASGI app (:mod:`.app`): the HTTP transport (:mod:`.http`,
one router per concern) and, with ``grpc_address=``, the gRPC one beside it (:mod:`.grpc`),
both over the transport-free OIP (:mod:`.oip`) and the served model (:mod:`.engine`);
:class:`ServeConfig` holds its limits (:mod:`.config`); :func:`run` serves it with uvicorn,
finishing in-flight requests on SIGTERM and closing connections that hold nothing
(:mod:`.http.server`, :mod:`.http.connections`; ``uvicorn.run(app)`` alone would not). See
``docs/serving.md``.
"""

from __future__ import annotations

from mgsv_sk._extras import require

for _module in ("fastapi", "prometheus_client", "python_multipart", "simdjson"):
    require(_module, "mgsv_sk.serve")

from .app import create_app  # noqa: E402
from .config import ServeConfig  # noqa: E402
from .engine import ServedModel  # noqa: E402
from .http.server import run  # noqa: E402

__all__ = ["ServeConfig", "ServedModel", "create_app", "run"]
