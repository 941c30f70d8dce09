"""Requests that arrive together are answered by one call: opportunistic batching.

One MsG request against a catalogue reads every track's X-Pool snippet states once; a
batch of videos shares that read, not the per-video work (the X-Pool head's projections,
the moment head on each video's candidates): measured at 2,000 tracks, a batch of 4 costs
about 2.3 single requests and a batch of 8 about 4. :class:`Coalescer` lets up to
``lanes`` batches run at once; a request that arrives while every lane is busy waits, and
the next free lane takes it with other waiting requests of the same kind (a fair share of
them: their number over the lanes, and at most ``max_batch``). Alone, a request runs at
once, as without batching. No timer: nothing waits for a batch to fill.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Any

__all__ = ["Coalescer"]


class _Slot:
    __slots__ = ("key", "payload", "result", "error", "done", "promoted")

    def __init__(self, key: Hashable, payload: Any) -> None:
        self.key, self.payload = key, payload
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
    """

    def __init__(self, run: Callable[[Sequence[Any]], Sequence[Any]], *, lanes: int = 1,
                 max_batch: int = 16) -> None:
        if lanes < 1 or max_batch < 1:
            raise ValueError(f"lanes and max_batch must be >= 1, got {lanes}, {max_batch}")
        self._run, self.lanes, self.max_batch = run, lanes, max_batch
        self._cond = threading.Condition()
        self._queue: list[_Slot] = []
        self._active = 0

    def submit(self, key: Hashable, payload: Any) -> Any:
        slot = _Slot(key, payload)
        with self._cond:
            self._queue.append(slot)
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
        if slot.error is not None:
            raise slot.error
        return slot.result

    def _take(self) -> list[_Slot]:
        """The oldest waiting call and more of its key, up to a fair share of those waiting
        (their number over the lanes, rounded up) and ``max_batch`` (lock held). A batch
        costs about its calls' sum (the model's per-video work does not shrink in a
        batch): a lane that took every waiting call would make them all wait for the
        longest batch while the other lanes answer newcomers alone."""
        if not self._queue:
            return []
        key = self._queue[0].key
        same = [s for s in self._queue if s.key == key]
        batch = same[: min(self.max_batch, -(-len(same) // self.lanes))]
        taken = {id(s) for s in batch}
        self._queue = [s for s in self._queue if id(s) not in taken]
        return batch

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
