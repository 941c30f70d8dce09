"""Bounded admission and a bounded pool of inference threads.

A request is admitted when fewer than ``workers + queue_size`` are in the system, else it
is refused at once (the caller answers 503 with ``Retry-After``): the queue never grows
without bound and no client waits forever. Admitted work runs on ``workers`` threads that
share one set of onnxruntime sessions.

:class:`ClientGate` bounds the requests one client address has in progress (reading its
body, waiting or running), so one address cannot take every place in the queue; a client
is counted by :func:`client_key` (an IPv6 host by its /64). :class:`Pacer` bounds the
requests a second one client may start while others are active.
"""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

__all__ = ["Admission", "ByteBudget", "ClientGate", "NoRoom", "Overloaded", "Pacer",
           "TooManyFromClient", "client_key", "unless_given_up"]

T = TypeVar("T")


class Overloaded(Exception):
    """The admission queue is full."""


class TooManyFromClient(Exception):
    """One client address already has its share of requests in progress."""


class NoRoom(Exception):
    """The bytes asked for do not fit the budget (or the disk) now."""


class ByteBudget:
    """At most ``capacity`` bytes held at once and, when ``folder`` is given, never more
    than the disk holding it has free beyond ``keep_free``: the uploads being received
    (each reserves what it may write before its first byte) or the request bodies being
    read into memory (each holds what has arrived)."""

    def __init__(self, capacity: int, folder: str | None = None, keep_free: int = 0) -> None:
        self.capacity, self.folder, self.keep_free = capacity, folder, keep_free
        self._lock = threading.Lock()
        self.reserved = 0

    def _take(self, size: int) -> None:
        with self._lock:
            full = self.reserved + size > self.capacity
            if not full and self.folder is not None:
                full = size + self.keep_free > shutil.disk_usage(self.folder).free
            if full:
                raise NoRoom
            self.reserved += size

    def _give(self, size: int) -> None:
        with self._lock:
            self.reserved -= size

    def take(self, size: int) -> Callable[[], None]:
        """Hold ``size`` bytes (or raise :class:`NoRoom`) until the returned function is
        called; calling it again gives nothing back twice."""
        self._take(size)
        given = [False]

        def give() -> None:
            if not given[0]:
                given[0] = True
                self._give(size)
        return give

    @contextmanager
    def reserve(self, size: int) -> Iterator[None]:
        """Hold ``size`` bytes for the body of the ``with``, or raise :class:`NoRoom`."""
        give = self.take(size)
        try:
            yield
        finally:
            give()

    @contextmanager
    def holding(self) -> Iterator[Callable[[int], None]]:
        """A function that holds n more bytes (or raises :class:`NoRoom`) until the
        ``with`` ends."""
        held = [0]

        def hold(size: int) -> None:
            self._take(size)
            held[0] += size

        try:
            yield hold
        finally:
            self._give(held[0])


def client_key(address: str) -> str:
    """The client a connection's address counts as, for every per-client limit: an IPv4
    address as itself (written IPv4-mapped, ``::ffff:10.0.0.1``, too), an IPv6 address as
    its /64 network (a host is given a whole /64 and may send each request from another
    address of it), anything else (a Unix socket's name) as given.

    >>> client_key("::ffff:10.0.0.1"), client_key("2001:db8:1:2:a::5")
    ('10.0.0.1', '2001:db8:1:2::/64')
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        mapped = ip.ipv4_mapped
        if mapped is not None:
            return str(mapped)
        return str(ipaddress.ip_network((ip, 64), strict=False))
    return str(ip)


class ClientGate:
    """At most ``per_client`` requests in progress per client (:func:`client_key` of its
    address)."""

    def __init__(self, per_client: int) -> None:
        self.per_client = per_client
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}

    @contextmanager
    def hold(self, client: str) -> Iterator[None]:
        """Count one request of ``client`` while it is in progress, or raise
        :class:`TooManyFromClient`."""
        client = client_key(client)
        with self._lock:
            held = self._held.get(client, 0)
            if held >= self.per_client:
                raise TooManyFromClient
            self._held[client] = held + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._held[client] - 1
                if left:
                    self._held[client] = left
                else:
                    del self._held[client]  # the table holds only clients in progress


#: The longest one request of a paced client waits to be read (its debt is capped there).
MOST_PACING_SECONDS = 1.0
#: A client that made a request this recently is active (the time an empty bucket, at its
#: capped debt, takes to fill again: a client forgotten after it starts afresh, full).
ACTIVE_SECONDS = 1.0 + MOST_PACING_SECONDS


class Pacer:
    """Requests a second each client (:func:`client_key`) may start while other clients
    are active too: a token bucket of ``rate`` a second, as many deep, per client. Past
    it, :meth:`wait` says how long the client's next request should wait before it is
    read (its debt, at most :data:`MOST_PACING_SECONDS`); nothing is refused. A client
    alone (no other made a request in the last :data:`ACTIVE_SECONDS`) is never slowed,
    nor one ``exempt`` names (a trusted reverse proxy, whose own limits apply). ``paced``
    is told each wait (the metrics count them).

    Requests that need no inference cost only the event loop, which every client shares:
    one address on 16 connections pipelining health, metrics and metadata GETs (1,600
    answers a second) held another client's ``infer`` p50 at 148 ms against 31 quiet.
    Used from the event loop only (HTTP connections and gRPC calls alike)."""

    def __init__(self, rate: float | None,
                 exempt: Callable[[str], bool] = lambda _: False,
                 paced: Callable[[float], None] = lambda _: None) -> None:
        self.rate, self._exempt, self._paced = rate, exempt, paced
        # client: (tokens, when), the least recently active first (each use moves it last)
        self._buckets: dict[str, tuple[float, float]] = {}

    def wait(self, address: str, now: float, charge: bool = True) -> float:
        """Note a request of ``address`` at ``now`` (a monotonic clock's seconds), taken
        from its bucket unless ``charge`` is false (a request other limits bound: it only
        makes the client active); the seconds its next request should wait for its debt
        (0: at once), whatever that request is."""
        seconds = self._take(address, now, charge)
        if seconds > 0:
            self._paced(seconds)
        return seconds

    def charge(self, address: str, now: float) -> None:
        """Take one request of ``address`` from its bucket after the fact (it was found to
        cost what a charged one does); its debt delays the client's next request."""
        self._take(address, now, True)

    def _take(self, address: str, now: float, charge: bool) -> float:
        rate = self.rate
        if rate is None or self._exempt(address):
            return 0.0
        key = client_key(address)
        buckets = self._buckets
        tokens, then = buckets.pop(key, (rate, now))
        while buckets:  # forget the inactive, least recent first (their buckets are full)
            oldest = next(iter(buckets))
            if buckets[oldest][1] > now - ACTIVE_SECONDS:
                break
            del buckets[oldest]
        tokens = max(min(rate, tokens + (now - then) * rate) - charge,
                     -rate * MOST_PACING_SECONDS)
        buckets[key] = (tokens, now)
        if len(buckets) < 2 or tokens >= 0:  # alone: the debt is kept, nobody waits
            return 0.0
        return -tokens / rate


class Admission:
    """``workers`` threads and room for ``queue_size`` waiting requests."""

    def __init__(self, workers: int, queue_size: int) -> None:
        self.workers = workers
        self.capacity = workers + queue_size
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mgsv-infer")
        self._lock = threading.Lock()
        self._admitted = 0
        self._running = 0

    @property
    def admitted(self) -> int:
        """Requests in the system (running or waiting)."""
        return self._admitted

    @property
    def waiting(self) -> int:
        """Admitted requests not yet on a thread."""
        return self._admitted - self._running

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one place in the system for a whole request, or raise :class:`Overloaded`."""
        with self._lock:
            if self._admitted >= self.capacity:
                raise Overloaded
            self._admitted += 1
        try:
            yield
        finally:
            with self._lock:
                self._admitted -= 1

    async def run(self, func: Callable[..., T], *args: Any) -> tuple[T, float]:
        """Run ``func(*args)`` on a pool thread; returns its result and the seconds it
        waited for a thread (call inside :meth:`slot`)."""
        waited = [0.0]
        result = await asyncio.wrap_future(self._pool.submit(self._timed(func, args, waited)))
        return result, waited[0]

    def _timed(self, func: Callable[..., T], args: tuple[Any, ...],
               waited: list[float]) -> Callable[[], T]:
        queued = time.perf_counter()

        def call() -> T:
            waited[0] = time.perf_counter() - queued
            with self._lock:
                self._running += 1
            try:
                return func(*args)
            finally:
                with self._lock:
                    self._running -= 1

        return call

    def shutdown(self) -> None:
        """Finish what runs and stop the threads (after the server stopped taking
        requests)."""
        self._pool.shutdown(wait=True)


async def unless_given_up(work: Awaitable[T], abandoned: threading.Event,
                          gone: Callable[[], Awaitable[Any]] | None) -> T:
    """``work``'s answer. When its client leaves first (``gone`` returns, or this
    coroutine is cancelled, as gRPC cancels a call), ``abandoned`` is set, so the work not
    yet started is answered unrun (:class:`.batching.Abandoned`). The work itself is never
    cancelled: its admission place stays held, and what it uses stays in place, until its
    thread is done with it."""
    task = asyncio.ensure_future(work)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # read if left behind
    watcher = asyncio.ensure_future(gone()) if gone is not None else None
    try:
        if watcher is not None:
            await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                abandoned.set()
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        abandoned.set()
        raise
    finally:
        if watcher is not None:
            watcher.cancel()
