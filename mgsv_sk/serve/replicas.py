"""Replicas of the service behind one endpoint, on Ray Serve (the ``replicas`` extra).

One ``mgsv-sk serve`` process answers with its own onnxruntime sessions on its own cores;
where that is not enough, Ray Serve runs N copies of the same app (:func:`create_app`,
unchanged: the OIP paths, the uploads, the audio, the page and the metrics) as N
processes, each loading the bundle and holding its own sessions, and routes every request
of its one HTTP endpoint to the least busy replica. Each answer carries the header
``X-MGSV-Replica`` (the replica's process id), so a client can tell the replicas apart.

    serve run examples/deploy/ray_serve.yaml          # the manifest, or from Python:
    >>> from ray import serve                                          # doctest: +SKIP
    >>> serve.run(deployment("bundle/", replicas=2), route_prefix="/")  # doctest: +SKIP

Torch-free, like the rest of :mod:`mgsv_sk.serve`; see ``docs/serving.md`` (Replicas) and
``examples/deploy/`` (the Ray Serve config and a KServe InferenceService).
"""

from __future__ import annotations

import os
from typing import Any

from mgsv_sk._extras import require

from .config import ServeConfig

__all__ = ["REPLICA_HEADER", "app_builder", "deployment", "replica_app"]

#: The response header naming the replica (its process id) that answered.
REPLICA_HEADER = "x-mgsv-replica"


class _ReplicaHeader:
    """Pure ASGI middleware: adds ``X-MGSV-Replica`` to every HTTP answer (streamed
    bodies untouched)."""

    def __init__(self, app: Any, tag: str) -> None:
        self.app, self.tag = app, tag.encode("latin-1")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def tagged(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (REPLICA_HEADER.encode(), self.tag)]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, tagged)


def replica_app(bundle: str | os.PathLike[str], catalogue: str | os.PathLike[str] | None = None,
                *, audio_dir: str | os.PathLike[str] | None = None,
                config: ServeConfig | None = None) -> Any:
    """The app one replica serves: :func:`create_app` with the ``X-MGSV-Replica`` header
    added, its start-up returning once the bundle is loaded and warm: Ray Serve routes
    requests to a replica once its start-up has run, and one still loading answered them
    503 while the other could have served them."""
    from .app import create_app

    app = create_app(bundle, catalogue, audio_dir=audio_dir, config=config,
                     load_in_background=False)
    app.add_middleware(_ReplicaHeader, tag=str(os.getpid()))
    return app


def deployment(bundle: str | os.PathLike[str], catalogue: str | os.PathLike[str] | None = None,
               *, replicas: int = 2, workers: int = 4, n_threads: int = 1,
               audio_dir: str | os.PathLike[str] | None = None,
               num_cpus: float | None = None, name: str = "mgsv") -> Any:
    """A Ray Serve application of ``replicas`` copies of the service.

    Parameters
    ----------
    bundle, catalogue, audio_dir : paths
        As for ``mgsv-sk serve``; every replica's machine must see them (a shared volume).
    replicas : int
        Processes, each with its own onnxruntime sessions.
    workers, n_threads : int
        Threads of a replica holding inference calls, and onnxruntime threads of each
        batch. A replica runs one batch at a time (one lane: ``n_threads`` cores), so its
        ``workers`` concurrent calls are batched; more cores for a replica mean more
        replicas.
    num_cpus : float, optional
        CPUs Ray reserves per replica (default ``n_threads``).

    Returns
    -------
    ray.serve.Application
        For ``serve.run(app, route_prefix="/")``, or the ``import_path`` of a Serve config
        (through :func:`app_builder`).
    """
    serve = require("ray.serve", "replicas on Ray Serve")
    config = ServeConfig(workers=workers, n_threads=n_threads, lanes=1)
    paths = (os.fspath(bundle), None if catalogue is None else os.fspath(catalogue),
             None if audio_dir is None else os.fspath(audio_dir))

    def build() -> Any:  # run in each replica's process: the sessions are its own
        return replica_app(paths[0], paths[1], audio_dir=paths[2], config=config)

    cpus = float(n_threads) if num_cpus is None else float(num_cpus)
    ingress = serve.deployment(name=name, num_replicas=int(replicas),
                               ray_actor_options={"num_cpus": cpus})(serve.ingress(build)())
    return ingress.bind()


def app_builder(args: dict[str, Any]) -> Any:
    """The Serve config's ``import_path`` (``mgsv_sk.serve.replicas:app_builder``): its
    ``args`` are :func:`deployment`'s keywords (``bundle`` required)."""
    if "bundle" not in args:
        raise ValueError("the Serve config's args need bundle: /path/to/bundle")
    known = {"bundle", "catalogue", "replicas", "workers", "n_threads", "audio_dir",
             "num_cpus", "name"}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"unknown args {unknown} in the Serve config; expected some of "
                         f"{sorted(known)}")
    return deployment(args["bundle"], args.get("catalogue"),
                      replicas=int(args.get("replicas", 2)), workers=int(args.get("workers", 4)),
                      n_threads=int(args.get("n_threads", 1)), audio_dir=args.get("audio_dir"),
                      num_cpus=None if args.get("num_cpus") is None else float(args["num_cpus"]),
                      name=str(args.get("name", "mgsv")))
