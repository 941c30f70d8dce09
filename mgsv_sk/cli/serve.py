"""``mgsv-sk serve``: the HTTP service and its demo page (:mod:`mgsv_sk.serve`)."""

from __future__ import annotations

import argparse
import math
import signal
import socket
from typing import Any

from .commands import UserError, _existing, _say

__all__ = ["add_serve_command", "cmd_serve"]


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from ..serve import ServeConfig, create_app, run
    except ImportError as exc:
        raise UserError(str(exc)) from exc
    bundle = _existing(args.bundle, "ONNX bundle")
    if args.catalogue is not None:
        _existing(args.catalogue, "catalogue store")
    if args.audio is not None:
        _existing(args.audio, "audio folder")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.quiet:
        _say(args, f"warning: listening on {args.host}, reachable from other machines; put "
                   "it behind a TLS reverse proxy")
    limits: dict[str, Any] = {} if args.workers is None else {"workers": args.workers}
    config = ServeConfig(**limits, queue_size=args.queue_size,
                         max_upload_bytes=int(args.max_upload_mb * 2**20),
                         max_video_seconds=args.max_video_seconds,
                         n_threads=args.n_threads,
                         max_client_requests=args.max_client_requests,
                         max_client_connections=args.max_client_connections,
                         max_client_rate=args.max_client_rate or None,
                         max_connections=args.max_connections,
                         batch_delay_ms=args.batch_delay_ms, lanes=args.lanes,
                         forwarded_allow_ips=args.forwarded_allow_ips)
    if args.grpc_port is not None and args.grpc_port == args.port:
        raise UserError(f"--grpc-port {args.grpc_port} is also the HTTP --port; give gRPC a "
                        "port of its own (e.g. --grpc-port 8001)")
    try:  # uvicorn would say only "Name or service not known", once the model is loaded
        socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UserError(f"cannot listen on --host {args.host!r} ({exc}); give an address of "
                        "this machine: 127.0.0.1 (default), ::1, or 0.0.0.0 for every "
                        "interface") from exc
    host = f"[{args.host}]" if ":" in args.host else args.host  # IPv6 in brackets
    grpc = None if args.grpc_port is None else f"{host}:{args.grpc_port}"
    app = create_app(bundle, args.catalogue, audio_dir=args.audio, config=config,
                     grpc_address=grpc)
    _say(args, f"serving {bundle} on http://{args.host}:{args.port}/"
               + (f" and gRPC {grpc}" if grpc else "")
               + " (Ctrl-C or SIGTERM to stop; in-flight requests finish first)")
    stopped_by = run(app, args.host, args.port, graceful_seconds=args.graceful_seconds,
                     log_level="info" if args.verbose else "warning", access_log=args.verbose)
    if stopped_by is not None:
        _say(args, f"stopped by {signal.Signals(stopped_by).name}; in-flight requests were "
                   "finished")
    return 0


def _positive(kind: Any) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
        return value
    return parse


def _non_negative(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 1-65535, got {text}")
    return value


def add_serve_command(sub: Any, command: Any) -> None:
    """Add ``serve`` to the subparsers ``sub``; ``command`` is the CLI's parser factory."""
    p = command(sub, "serve", cmd_serve, "HTTP service + demo page for an ONNX bundle",
                "Serve an ONNX bundle over HTTP (torch-free): Open Inference Protocol "
                "health, metadata and infer under /v2, video uploads at /v1/recommend, the "
                "moments' audio, Prometheus /metrics and a demo page at /. See "
                "docs/serving.md.",
                "mgsv-sk serve bundle/ --catalogue catalogue/ --port 8000")
    p.add_argument("bundle", help="ONNX bundle from `export` (with encoders= for uploads)")
    p.add_argument("--catalogue", metavar="STORE",
                   help="store from `catalogue` (default: the bundle's own tracks)")
    p.add_argument("--audio", metavar="DIR",
                   help="folder of <music_id>.wav|.mp3|... for tracks whose audio file the "
                        "catalogue does not record")
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    p.add_argument("--port", type=_port, default=8000, help="default 8000")
    p.add_argument("--grpc-port", type=_port, default=None, metavar="PORT",
                   help="also serve the Open Inference Protocol over gRPC on this port "
                        "(inference.GRPCInferenceService), on the same host")
    p.add_argument("--workers", type=_positive(int), default=None, metavar="N",
                   help="threads holding inference calls, batched by one lane per core "
                        "(default: 4 per core, at most 16)")
    p.add_argument("--n-threads", type=_positive(int), default=1, metavar="N",
                   help="onnxruntime threads per batch; a lane per core's worth (default 1)")
    p.add_argument("--lanes", type=_positive(int), default=None, metavar="N",
                   help="batches of inference at once (default: the cores this process "
                        "may use, its container's CPU quota included, over --n-threads)")
    p.add_argument("--queue-size", type=int, default=16, metavar="N",
                   help="requests waiting beyond the workers before 503 (default 16)")
    p.add_argument("--max-client-requests", type=_positive(int), default=None, metavar="N",
                   help="requests one client address may have in progress (default: half "
                        "of workers + queue size)")
    p.add_argument("--max-client-connections", type=_positive(int), default=None,
                   metavar="N", help="open connections one client address may hold "
                                     "(default: 4 x (workers + queue size), at least 64; "
                                     "behind a reverse proxy, its connection pool)")
    p.add_argument("--max-client-rate", type=_non_negative, default=200.0, metavar="N",
                   help="requests a second one client address may start while others are "
                        "active; beyond it its next requests wait (default 200; 0: no "
                        "limit)")
    p.add_argument("--max-connections", type=_positive(int), default=None, metavar="N",
                   help="open connections from all addresses; one more closes the one that "
                        "has waited longest for a request (default: half the open-file "
                        "limit, at least 64)")
    p.add_argument("--forwarded-allow-ips", default=None, metavar="IPS",
                   help="reverse proxies whose X-Forwarded-For names the client, "
                        "comma-separated addresses or networks, or '*' (default: none; a "
                        "client is its connection's address)")
    p.add_argument("--batch-delay-ms", type=float, default=10.0, metavar="MS",
                   help="longest wait of a free inference lane, while no other is free, for "
                        "concurrent requests to batch with (default 10; 0: never waits)")
    p.add_argument("--max-upload-mb", type=_positive(float), default=64.0, metavar="MB",
                   help="largest video upload (default 64)")
    p.add_argument("--max-video-seconds", type=_positive(float), default=60.0, metavar="S",
                   help="longest video accepted (default 60)")
    p.add_argument("--graceful-seconds", type=_positive(float), default=30.0, metavar="S",
                   help="on SIGTERM, how long in-flight requests may take to finish "
                        "(default 30)")
