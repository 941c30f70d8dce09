"""The service's limits, checked once when the app is built (numbers only, no imports of the
web stack)."""

from __future__ import annotations

import functools
import ipaddress
import resource
from dataclasses import asdict, dataclass, field
from typing import Any

from .batching import DEFAULT_MAX_DELAY
from .cores import usable_cores

__all__ = ["ServeConfig"]


def _default_workers() -> int:
    """Four threads per core this process may use (:func:`.cores.usable_cores`), at most
    16: the calls in the system at once are what a lane of batched inference (one per
    core) gathers into a batch, and a thread holds one call while it waits (see
    :mod:`.batching`)."""
    return max(1, min(16, 4 * usable_cores()))


def _entries(proxies: str) -> list[str]:
    """``forwarded_allow_ips``'s comma-separated entries, stripped."""
    return [entry.strip() for entry in proxies.split(",")]


@functools.lru_cache(maxsize=8)
def _networks(proxies: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None:
    """``forwarded_allow_ips``'s networks, parsed once (each request asks whether its
    client is a trusted proxy); None for ``"*"``, any sender."""
    entries = _entries(proxies)
    if "*" in entries:
        return None
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def _proxies_problem(proxies: object) -> str | None:
    """What is wrong with ``forwarded_allow_ips`` (None, ``"*"`` or addresses and networks,
    comma-separated), or None."""
    if proxies is None:
        return None
    if not isinstance(proxies, str) or not proxies.strip():
        return (f"forwarded_allow_ips must be addresses or networks, comma-separated, or "
                f"'*', got {proxies!r}")
    for entry in _entries(proxies):
        if entry == "*":
            continue
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            return (f"forwarded_allow_ips: {entry[:64]!r} is not an IP address or network; "
                    "give the reverse proxy's, e.g. 127.0.0.1 or 10.0.0.0/8, or '*'")
    return None


@dataclass(frozen=True)
class ServeConfig:
    """Limits of one server process.

    Parameters
    ----------
    workers : int
        Threads that run inference (one shared set of onnxruntime sessions; ``run`` is
        thread-safe). Most wait while a lane (one per core's worth of ``n_threads``) runs
        their call in a batch: the CPU is bounded by the lanes, the batches by the
        threads. Default: four per core, at most 16 (a thread per core left nothing to
        batch: 8 clients on 2 cores saw a p99 5.3-5.5x the one-client p50, 4.1-4.3x with
        8 threads).
    queue_size : int
        Requests admitted beyond ``workers`` that wait for a thread; one more is answered
        503 with ``Retry-After`` (every request gets an answer, none waits unboundedly).
    max_upload_bytes : int
        Largest video upload (413 above it). It is streamed to a temporary file, never held
        in memory, and deleted after the request.
    max_video_seconds : float
        Longest video accepted (422 above it); the model reads its first 50 s.
    max_k : int
        Most tracks one request may ask for.
    max_moments : int
        Most moments per track one request may ask for.
    n_threads : int
        onnxruntime threads of each graph's session (per batch; the cores over them is
        the number of batches that run at once).
    retry_after_s : int
        The ``Retry-After`` a 503 carries.
    max_json_bytes : int
        Largest body of ``infer`` (413 above it), JSON or binary tensors, after
        decompression, and largest gRPC message: 50 frames x 512 floats is 0.53 MB as
        JSON (1.04 MB pretty-printed, nested), 0.1 MB binary. Its JSON is parsed on the
        event loop every client shares: 8 MiB of numbers took 118 ms there, 2 MiB 19.
    body_idle_seconds : float
        Longest pause between two chunks of a request body (408 and the connection closed
        beyond it), and longest an answer's bytes may wait for the client to read them (a
        few hundred KB at a time; the connection is aborted beyond it).
    body_seconds : float
        Longest time to receive a whole body (408 beyond it): an upload at the size cap
        needs about 4.5 Mbit/s at the default.
    max_client_requests : int or None
        Requests one client address may have in progress (reading its body, queued or
        running; 429 beyond it). Default: half the places (``workers + queue_size``), at
        least 1, so one address cannot fill the queue. Behind a reverse proxy, the address
        is the one it forwards, where ``forwarded_allow_ips`` names the proxy.
    header_seconds : float
        Longest wait for a request's headers, from the connection opening or the previous
        answer (the connection is closed beyond it; uvicorn alone waits forever).
    max_client_connections : int or None
        Open connections one address may hold (one more is answered 503 and closed).
        Default: four per place (``workers + queue_size``), at least 64. Behind a reverse
        proxy every connection is the proxy's: set it to the proxy's connection pool.
    max_client_rate : float or None
        Requests a second one address may start while other addresses are active too (a
        burst of as many at once). Beyond it its next requests are not read for a while
        (none is refused: the client sees latency, the event loop none of its work), so
        one address sending requests that run no inference (health, metrics, metadata,
        inference requests refused before it) cannot take the event loop every client
        shares: 16 connections pipelining health GETs held another client's ``infer`` p50
        at 4.8x its quiet value. Inference that runs is not charged. gRPC calls count
        alike. None: no pacing. A lone client (no other asked in the last 2 s) is never
        paced, nor a proxy named in ``forwarded_allow_ips`` (whose own limits apply).
    max_connections : int or None
        Open connections from all addresses together; one more closes the connection that
        has waited longest for its next request's headers (else it is answered 503 and
        closed), so connections that send nothing, from however many addresses, never take
        every file descriptor. Default: half the process's open-file limit, at least 64.
        The gRPC port holds at most half as many again (grpcio refuses one more: it cannot
        close an idle connection to make room).
    batch_delay_ms : float
        Longest wait of a free inference lane, while no other lane is free, for its share of
        the concurrent ``infer`` calls to arrive and be batched with (see
        :mod:`.batching`; 0: a lane never waits). A lone client never waits.
    forwarded_allow_ips : str or None
        The reverse proxies whose ``X-Forwarded-For`` and ``X-Forwarded-Proto`` name the
        client: addresses or networks, comma-separated (``"127.0.0.1"``, ``"10.0.0.0/8"``),
        or ``"*"`` (any sender: only where nothing but the proxy can reach the port).
        Default None: no one's, and a client is its connection's address. Trusting the
        loopback by default (uvicorn's default) let any local client give each request
        another address and so fill the queue alone.
    lanes : int or None
        Batches of inference that run at once. Default: the cores this process may use
        (its CPU affinity, capped by a container's CPU quota) over ``n_threads``. Uploads
        decode at most ``lanes * n_threads`` at once. Applies where the app loads the
        bundle (a :class:`ServedModel` given to ``create_app`` keeps its own).
    """

    workers: int = field(default_factory=_default_workers)  # the cores when made, not at import
    queue_size: int = 16
    max_upload_bytes: int = 64 << 20
    max_video_seconds: float = 60.0
    max_k: int = 50
    max_moments: int = 5
    n_threads: int = 1
    retry_after_s: int = 1
    max_json_bytes: int = 2 << 20
    body_idle_seconds: float = 10.0
    body_seconds: float = 120.0
    max_client_requests: int | None = None
    header_seconds: float = 10.0
    max_client_connections: int | None = None
    max_client_rate: float | None = 200.0
    max_connections: int | None = None
    batch_delay_ms: float = 1000 * DEFAULT_MAX_DELAY  # 10 ms
    lanes: int | None = None
    forwarded_allow_ips: str | None = None

    def __post_init__(self) -> None:
        problems = []
        for name in ("workers", "max_upload_bytes", "max_k", "max_moments",
                     "n_threads", "retry_after_s", "max_json_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be an integer >= 1, got {value!r}")
        if (isinstance(self.queue_size, bool) or not isinstance(self.queue_size, int)
                or self.queue_size < 0):
            problems.append(f"queue_size must be an integer >= 0, got {self.queue_size!r}")
        for name in ("max_video_seconds", "body_idle_seconds", "body_seconds",
                     "header_seconds"):
            seconds = getattr(self, name)
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (
                    0 < seconds < float("inf")):
                problems.append(f"{name} must be a positive number, got {seconds!r}")
        delay = self.batch_delay_ms
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not (
                0 <= delay <= 1000):
            problems.append(f"batch_delay_ms must be a number from 0 to 1000, got {delay!r}")
        for name in ("max_client_requests", "max_client_connections", "max_connections",
                     "lanes"):
            share = getattr(self, name)
            if share is not None and (isinstance(share, bool) or not isinstance(share, int)
                                      or share < 1):
                problems.append(f"{name} must be an integer >= 1, got {share!r}")
        rate = self.max_client_rate
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float))
                                 or not 0 < rate < float("inf")):
            problems.append(f"max_client_rate must be a positive number or None, got {rate!r}")
        problem = _proxies_problem(self.forwarded_allow_ips)
        if problem:
            problems.append(problem)
        if problems:
            raise ValueError("invalid server limits: " + "; ".join(problems))

    @property
    def trusted_proxies(self) -> list[str] | None:
        """The entries of ``forwarded_allow_ips`` (None: no proxy is trusted)."""
        return None if self.forwarded_allow_ips is None else _entries(self.forwarded_allow_ips)

    def is_trusted_proxy(self, address: str) -> bool:
        """Whether ``address`` is one of ``forwarded_allow_ips`` (an address, within a
        network, or any under ``"*"``)."""
        if self.forwarded_allow_ips is None:
            return False
        networks = _networks(self.forwarded_allow_ips)
        if networks is None:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in networks)

    @property
    def client_share(self) -> int:
        """Requests one client address may have in progress."""
        if self.max_client_requests is not None:
            return self.max_client_requests
        return max(1, (self.workers + self.queue_size) // 2)

    @property
    def client_connections(self) -> int:
        """Open connections one client address may hold."""
        if self.max_client_connections is not None:
            return self.max_client_connections
        return max(64, 4 * (self.workers + self.queue_size))

    @property
    def upload_budget(self) -> int:
        """Bytes of uploads being received at once, all clients together: a full-size
        upload for every place (``workers + queue_size``); the disk keeps one more free."""
        return (self.workers + self.queue_size) * self.max_upload_bytes

    @property
    def body_budget(self) -> int:
        """Bytes of ``infer`` bodies being read into memory at once, all clients together:
        four capped bodies per place (more could not be admitted anyway)."""
        return 4 * (self.workers + self.queue_size) * self.max_json_bytes

    @property
    def audio_budget(self) -> int:
        """Bytes of moment audio (WAV) held in memory at once while being sent, all clients
        together: a longest moment (:attr:`audio_seconds`) of 48 kHz stereo for every
        place (``workers + queue_size``)."""
        return int((self.workers + self.queue_size) * self.audio_seconds * 48_000 * 2 * 2)

    @property
    def audio_seconds(self) -> float:
        """The longest moment ``/v1/tracks/{id}/audio`` plays: twice the longest video (a
        moment is as long as its video)."""
        return 2 * float(self.max_video_seconds)

    @property
    def connections(self) -> int:
        """Open connections from all addresses together: by default half the file
        descriptors this process may open (the rest for the gRPC port, the bundle, uploads
        and logs), at least 64."""
        if self.max_connections is not None:
            return self.max_connections
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return max(64, (soft if soft != resource.RLIM_INFINITY else 1 << 16) // 2)

    def public(self) -> dict[str, Any]:
        """The limits a client needs to know (the page and the model metadata show them)."""
        out = asdict(self)
        out["max_client_requests"] = self.client_share
        out["max_client_connections"] = self.client_connections
        out["max_connections"] = self.connections
        out["max_audio_seconds"] = self.audio_seconds
        for private in ("n_threads", "retry_after_s", "batch_delay_ms",
                        "forwarded_allow_ips"):
            out.pop(private)
        return out
