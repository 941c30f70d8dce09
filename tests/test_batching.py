"""Opportunistic batching of ``infer`` (mgsv_sk.serve.batching): calls that wait while
every lane is busy are answered by one call, each with the answer it would get alone; an
error reaches only the call that caused it."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from mgsv_sk.serve.batching import Coalescer


def test_waiting_calls_are_batched_and_answered_in_order():
    batches: list[list[int]] = []
    gate = threading.Event()

    def run(items):
        if not batches:
            gate.wait(10)  # hold the only lane until the others queue up
        batches.append(list(items))
        if 13 in items:
            raise ValueError("13 is unlucky")
        return [i * 10 for i in items]

    c = Coalescer(run, lanes=1, max_batch=4)
    out: dict[int, object] = {}

    def call(i):
        try:
            out[i] = c.submit("k", i)
        except ValueError as exc:
            out[i] = str(exc)

    first = threading.Thread(target=call, args=(0,))
    first.start()
    time.sleep(0.2)
    rest = [threading.Thread(target=call, args=(i,)) for i in (1, 2, 13, 4, 5)]
    for t in rest:
        t.start()
    time.sleep(0.3)
    gate.set()
    for t in [first, *rest]:
        t.join(10)
    assert out == {0: 0, 1: 10, 2: 20, 13: "13 is unlucky", 4: 40, 5: 50}
    assert batches[0] == [0] and max(len(b) for b in batches) == 4  # 1, 2, 13, 4 together
    with pytest.raises(ValueError, match="lanes"):
        Coalescer(run, lanes=0)


def test_a_free_lane_takes_a_fair_share_of_the_waiting_calls():
    """Two lanes, eight calls waiting: a lane takes half of them (rounded up), not all,
    so the other lane answers the rest instead of newcomers alone."""
    batches: list[list[int]] = []
    gate = threading.Event()
    lock = threading.Lock()

    def run(items):
        with lock:
            batches.append(list(items))
            first_two = len(batches) <= 2
        if first_two:
            gate.wait(10)  # hold both lanes until the others queue up
        return list(items)

    c = Coalescer(run, lanes=2, max_batch=16)
    threads = [threading.Thread(target=c.submit, args=("k", i)) for i in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    waiting = [threading.Thread(target=c.submit, args=("k", i)) for i in range(2, 10)]
    for t in waiting:
        t.start()
    time.sleep(0.3)
    gate.set()
    for t in [*threads, *waiting]:
        t.join(10)
    assert sorted(i for b in batches for i in b) == list(range(10))
    assert len(batches[2]) == 4  # the first lane to free takes ceil(8 / 2), not 8
    assert max(len(b) for b in batches) == 4


def test_batched_infer_equals_infer_alone(tmp_path_factory):
    pytest.importorskip("fastapi")
    from _serve import fixture_dir

    from mgsv_sk.serve import ServedModel

    fx = fixture_dir(tmp_path_factory)
    model = ServedModel.load(fx / "bundle", fx / "catalogue")
    rng = np.random.default_rng(0)
    calls = [dict(frames=rng.standard_normal((n, model.frame_dim)).astype(np.float32),
                  music_id=None, k=k, moments=m, seconds=float(n))
             for n, k, m in ((5, 2, 1), (9, 4, 1), (3, 1, 2), (12, 3, 1), (7, 4, 2))]
    calls.append(dict(frames=calls[0]["frames"], music_id=model.track_ids[1], k=1, moments=1,
                      seconds=5.0))
    alone = [model.infer(**c) for c in calls]
    model._batcher.lanes = 1  # one lane: concurrent calls queue and are batched
    got: dict[int, object] = {}
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, model.infer(**calls[i])))
               for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i, want in enumerate(alone):
        assert [r.music_id for r in got[i]] == [r.music_id for r in want]
        np.testing.assert_allclose([r.score for r in got[i]], [r.score for r in want],
                                   atol=1e-5)
        for a, b in zip(got[i], want):
            assert len(a.moments) == len(b.moments)
            np.testing.assert_allclose([(m.start, m.end, m.score) for m in a.moments],
                                       [(m.start, m.end, m.score) for m in b.moments],
                                       atol=1e-4)
