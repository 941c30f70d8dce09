"""Requests that arrive together are answered by one call: dynamic batching.

One MsG request against a catalogue reads every track's X-Pool snippet states once; a
batch of videos shares that read, not the per-video work (the X-Pool head's projections,
the moment head on each video's candidates): measured at 2,000 tracks, a batch of 2 costs
about 1.7 single requests, of 4 about 2.6 and of 8 about 4.8. :class:`Coalescer` lets up
to ``lanes`` batches run at once; a request that arrives while every lane is busy waits,
and the next free lane takes it with other waiting requests of the same kind.

How many a lane takes follows the load. The batch a lane aims at is the number of calls
recently in the system at once (its peak over the last second) over the lanes: at 8
concurrent clients on 2 lanes, batches of 4. A lane that frees while no other lane is
free (the others busy, or it is the only lane) and finds fewer calls waiting than that
waits up to ``max_delay`` seconds for the rest (over HTTP the clients it just answered
come back a few milliseconds later): without the wait a free lane takes the first of
them alone and the batches break up into ones and twos. (While another lane is free a
wait gains nothing: a call that arrives takes the free lane.) A single lane waits too:
with one lane (a one-core server or replica, 4 clients, over HTTP with the load
generator on the other core) it ran batches of 2.0 without, of 4.0 with, and answered
57.1 against 47.6 requests/s. The default 10 ms covers the return of a batch of 4 on two
cores, where the event loop answers and reads the four one after the other: with 4 ms
the last of them often missed its lane's batch and waited a whole batch more, and at 8
clients over HTTP the p99 was 1.2-1.3x what it is with 10 (six runs, each against the
other in turn; p50 and requests/s the same). A lane that finds more waiting than its
share takes a fair share of them (their number over the lanes). A call that finds a lane
free and another lane free too runs at once, as without batching; at one client the
share is one, and nothing ever waits (after a burst a single lane's lone call may wait
up to ``max_delay`` for the burst's share, until the peak is a second old).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any

__all__ = ["DEFAULT_MAX_DELAY", "Abandoned", "Coalescer", "DeadlineExceeded"]

#: Seconds a free lane waits by default, while no other is free, for its share of the calls
#: (the module docstring says why 10 ms); the service's ``batch_delay_ms`` default too.
DEFAULT_MAX_DELAY = 0.010


class DeadlineExceeded(Exception):
    """A call's deadline passed while it waited for a lane: it was not run."""


class Abandoned(Exception):
    """The caller gave a call up (its client left) while it waited for a lane: it was not
    run."""


class _Slot:
    __slots__ = ("key", "payload", "deadline", "abandoned", "result", "error", "done",
                 "promoted")

    def __init__(self, key: Hashable, payload: Any, deadline: float | None,
                 abandoned: threading.Event | None) -> None:
        self.key, self.payload, self.deadline = key, payload, deadline
        self.abandoned = abandoned
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = self.promoted = False


class Coalescer:
    """Run ``run(payloads)`` (a list in, one answer per payload out, in order) over
    batches of waiting calls of the same ``key``; :meth:`submit` blocks until its answer.

    Parameters
    ----------
    run : callable
        Answers a batch; if it raises, each call of the batch is answered alone, so an
        error reaches only the call that caused it.
    lanes : int
        Batches at once (e.g. cores / threads per batch).
    max_batch : int
        Most calls in one batch.
    max_delay : float
        Seconds a free lane waits, while no other lane is free, for its share of the calls
        to arrive (0: never waits).
    """

    #: Seconds over which the peak of calls in the system is remembered.
    PEAK_WINDOW = 1.0

    def __init__(self, run: Callable[[Sequence[Any]], Sequence[Any]], *, lanes: int = 1,
                 max_batch: int = 16, max_delay: float = DEFAULT_MAX_DELAY) -> None:
        if lanes < 1 or max_batch < 1:
            raise ValueError(f"lanes and max_batch must be >= 1, got {lanes}, {max_batch}")
        self._run, self.lanes, self.max_batch = run, lanes, max_batch
        self.max_delay = max_delay
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # a call done, promoted, or a lane freed
        self._arrived = threading.Condition(lock)  # a call submitted (to gathering lanes)
        self._queue: list[_Slot] = []
        self._active = 0
        self._in_system = 0  # calls submitted and not yet answered
        self._peak, self._peak_at = 0, 0.0
        self._gathering = 0  # lanes waiting on _arrived for their share

    @property
    def max_delay(self) -> float:
        return self._max_delay

    @max_delay.setter
    def max_delay(self, seconds: float) -> None:
        if not 0 <= seconds <= 1:
            raise ValueError(f"max_delay (the batch delay) must be between 0 and 1 s, got "
                             f"{seconds}")
        self._max_delay = float(seconds)

    def submit(self, key: Hashable, payload: Any, deadline: float | None = None,
               abandoned: threading.Event | None = None) -> Any:
        """The answer to ``payload``, batched with waiting calls of the same ``key``.

        Raises
        ------
        DeadlineExceeded
            ``deadline`` (``time.monotonic()`` seconds) passed before a lane took the call.
        Abandoned
            ``abandoned`` was set (its client left) before a lane took the call.
        """
        slot = _Slot(key, payload, deadline, abandoned)
        with self._cond:
            self._queue.append(slot)
            self._in_system += 1
            now = time.monotonic()
            if self._in_system >= self._peak or now - self._peak_at > self.PEAK_WINDOW:
                self._peak, self._peak_at = self._in_system, now
            if self._gathering:
                self._arrived.notify_all()
            if self._active < self.lanes:
                self._active += 1
                slot.promoted = True
            else:
                self._cond.wait_for(lambda: slot.done or slot.promoted)
        while slot.promoted and not slot.done:  # this thread holds a lane
            with self._cond:
                batch = self._take()
            if not batch:
                break  # its own call is in another lane's batch
            self._answer(batch)
        if slot.promoted:  # hand the lane to a waiting call, or free it
            with self._cond:
                waiting = next((s for s in self._queue if not s.promoted), None)
                if waiting is not None:
                    waiting.promoted = True
                else:
                    self._active -= 1
                self._cond.notify_all()
        with self._cond:
            self._cond.wait_for(lambda: slot.done)
            self._in_system -= 1
        if slot.error is not None:
            raise slot.error
        return slot.result

    def _share(self) -> int:
        """The batch a lane aims at: the recent peak of calls in the system over the
        lanes, rounded up, at most ``max_batch`` (lock held)."""
        return max(1, min(self.max_batch, -(-self._peak // self.lanes)))

    def _take(self) -> list[_Slot]:
        """The oldest waiting call and more of its key (lock held): its lane's share, or
        a fair share of those waiting when more wait (their number over the lanes,
        rounded up), at most ``max_batch``. While no other lane is free and fewer than the
        share wait, first wait up to ``max_delay`` for them. A batch costs less than
        its calls alone but more than one: a lane that took every waiting call would make
        them all wait for the longest batch while the other lanes answer newcomers alone."""
        share = self._share()
        if self._active >= self.lanes and self.max_delay > 0 and len(self._queue) < share:
            self._gathering += 1
            try:
                self._arrived.wait_for(lambda: len(self._queue) >= share, self.max_delay)
            finally:
                self._gathering -= 1
        self._expire()
        if not self._queue:
            return []
        key = self._queue[0].key
        same = [s for s in self._queue if s.key == key]
        batch = same[: min(self.max_batch, max(share, -(-len(same) // self.lanes)))]
        taken = {id(s) for s in batch}
        self._queue = [s for s in self._queue if id(s) not in taken]
        return batch

    def _expire(self) -> None:
        """Answer the waiting calls whose deadline passed with :class:`DeadlineExceeded`,
        and those given up with :class:`Abandoned` (lock held): they are not run."""
        now = time.monotonic()
        expired = [s for s in self._queue if (s.deadline is not None and s.deadline < now)
                   or (s.abandoned is not None and s.abandoned.is_set())]
        if expired:
            for s in expired:
                gone = s.abandoned is not None and s.abandoned.is_set()
                s.error, s.done = (Abandoned() if gone else DeadlineExceeded()), True
            self._queue = [s for s in self._queue if not s.done]
            self._cond.notify_all()

    def _answer(self, batch: list[_Slot]) -> None:
        try:
            answers = list(self._run([s.payload for s in batch]))
            if len(answers) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} got {len(answers)} answers")
            for s, a in zip(batch, answers):
                s.result = a
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error = exc
            else:  # one bad call must not fail the others: each alone, its own error
                for s in batch:
                    try:
                        s.result = self._run([s.payload])[0]
                    except Exception as alone:
                        s.error = alone
        with self._cond:
            for s in batch:
                s.done = True
            self._cond.notify_all()
