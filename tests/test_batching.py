"""Dynamic batching of ``infer`` (mgsv_sk.serve.batching): calls that wait while every
lane is busy are answered by one call, each with the answer it would get alone; an error
reaches only the call that caused it; a lane aims at its share of the calls in the
system and waits briefly for it while another lane is busy."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from mgsv_sk.serve.batching import Coalescer


def submit_in_turn(c: Coalescer, *names: str, pause: float = 0.1) -> list[threading.Thread]:
    """A thread per name submitting it, started ``pause`` seconds apart."""
    threads = []
    for name in names:
        threads.append(threading.Thread(target=c.submit, args=("k", name)))
        threads[-1].start()
        time.sleep(pause)
    return threads


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


def test_a_free_lane_takes_its_share_of_the_calls_in_the_system():
    """Two lanes, two calls running and eight waiting: the first lane to free takes its
    share of the ten (half, rounded up), not all eight, so the other lane answers the
    rest instead of newcomers alone."""
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

    c = Coalescer(run, lanes=2, max_batch=16, max_delay=0)
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
    assert batches[2] == [2, 3, 4, 5, 6]  # the oldest, ceil(10 / 2) of them
    assert sorted(len(b) for b in batches[2:]) == [3, 5]


def test_a_single_lane_waits_for_its_share_of_returning_calls():
    """One lane (a one-core server or replica) at four calls in the system: when its
    batch is answered, the four callers come back one after the other (over HTTP each
    through the event loop). The lane waits up to max_delay for its share (four) rather
    than answering the first to return alone and the rest as a second, smaller batch; a
    lane of a pair does not wait while the other lane is free (a call that arrives takes
    that lane)."""
    batches: list[list[str]] = []
    gate = threading.Event()
    lock = threading.Lock()

    def run(items):
        with lock:
            batches.append(sorted(items))
        if "hold" in items:
            gate.wait(10)
        return list(items)

    c = Coalescer(run, lanes=1, max_batch=16, max_delay=0.5)

    # four in the system: the share is four
    first = submit_in_turn(c, "hold", "p1", "p2", "p3", pause=0.05)
    gate.set()
    for t in first:
        t.join(10)
    assert batches[:2] == [["hold"], ["p1", "p2", "p3"]]
    # the callers come back 50 ms apart
    returning = submit_in_turn(c, "a", "b", "c", "d", pause=0.05)
    for t in returning:
        t.join(10)
    assert batches[2:] == [["a", "b", "c", "d"]]

    # two lanes, both free: a call runs at once whatever the recent peak
    pair = Coalescer(run, lanes=2, max_batch=16, max_delay=0.5)
    pair._peak, pair._peak_at = 8, time.monotonic()
    began = time.perf_counter()
    assert pair.submit("k", "alone") == "alone"
    assert time.perf_counter() - began < 0.25


def test_a_free_lane_waits_for_its_share_while_another_is_busy():
    """At four concurrent calls on two lanes a lane aims at batches of two: one that frees
    while the other lane is busy waits (up to max_delay) for a second call rather than
    answering the first alone; a call alone in the system never waits."""
    batches: list[list[str]] = []
    gates = {"hold1": threading.Event(), "hold2": threading.Event(),
             "hold3": threading.Event()}
    lock = threading.Lock()

    def run(items):
        with lock:
            batches.append(list(items))
        for item in items:
            if item in gates:
                gates[item].wait(10)
        return list(items)

    c = Coalescer(run, lanes=2, max_batch=16, max_delay=0.5)

    # four calls in the system at once: both lanes held, two waiting
    first = submit_in_turn(c, "hold1", "hold2", "w1", "w2")
    gates["hold1"].set()
    gates["hold2"].set()
    for t in first:
        t.join(10)
    assert ["w1", "w2"] in batches  # batched while both lanes were busy
    # one lane busy; "x" finds the other free and waits for "y", sent 0.1 s later
    second = submit_in_turn(c, "hold3", "x", "y")
    time.sleep(0.2)
    assert ["x", "y"] in batches
    gates["hold3"].set()
    for t in second:
        t.join(10)
    # alone in the system: runs at once, although the share is still two
    began = time.perf_counter()
    assert c.submit("k", "z") == "z"
    assert time.perf_counter() - began < 0.25
    assert batches[-1] == ["z"]
    with pytest.raises(ValueError, match="max_delay"):
        Coalescer(run, max_delay=-1)


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


def test_many_callers_on_two_lanes_each_get_their_own_answer():
    """Twelve threads, each making 25 calls of two kinds with random pauses, on two lanes
    that wait for their share: every call gets its own answer, of its own kind, and
    nothing is lost or stuck (a lost wake-up would hang here)."""
    rng = np.random.default_rng(0)
    pauses = rng.uniform(0, 0.004, size=(12, 25))
    sizes: list[int] = []
    kinds: list[int] = []  # kinds in each batch
    lock = threading.Lock()

    def run(items):
        with lock:
            sizes.append(len(items))
            kinds.append(len({kind for kind, _ in items}))
        time.sleep(0.002 * len(items))
        return [(kind, value * 2) for kind, value in items]

    c = Coalescer(run, lanes=2, max_batch=4, max_delay=0.003)
    wrong: list[tuple[int, int]] = []

    def caller(t: int) -> None:
        for i in range(25):
            kind = (t + i) % 2
            if c.submit(kind, (kind, 1000 * t + i)) != (kind, 2 * (1000 * t + i)):
                wrong.append((t, i))
            time.sleep(pauses[t, i])

    threads = [threading.Thread(target=caller, args=(t,)) for t in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert wrong == []
    assert sum(sizes) == 12 * 25 and max(sizes) <= 4 and max(sizes) > 1
    assert set(kinds) == {1}  # a batch holds calls of one key only
    assert c._in_system == 0 and c._active == 0 and not c._queue


def test_statistics_count_requests_stages_and_executions():
    from mgsv_sk.serve.statistics import InferStatistics

    stats = InferStatistics()
    with stats.request() as stages:
        stages.update(queue=0.002, compute_input=0.001, compute_infer=0.010)
    with pytest.raises(KeyError), stats.request():  # the error passes through, counted
        raise KeyError("x")
    for size in (2, 2, 1):
        stats.executed(size, 0.004)
    report = stats.report("mgsv", "v1")
    s = report["inference_stats"]
    assert (s["success"]["count"], s["fail"]["count"]) == (1, 1)
    assert s["queue"] == {"count": 1, "ns": 2_000_000}
    assert s["compute_output"]["count"] == 0  # a stage not reported is not counted
    assert (report["inference_count"], report["execution_count"]) == (5, 3)
    assert [(b["batch_size"], b["compute_infer"]) for b in report["batch_stats"]] == [
        (1, {"count": 1, "ns": 4_000_000}), (2, {"count": 2, "ns": 8_000_000})]


@pytest.mark.parametrize("why", ["deadline", "abandoned"])
def test_a_call_no_longer_wanted_while_it_waits_is_answered_unrun(why):
    """Call 1's deadline passes, or its client leaves, while call 0 holds the only lane:
    it is answered DeadlineExceeded / Abandoned and never run; call 2 (still wanted) is."""
    from mgsv_sk.serve.batching import Abandoned, DeadlineExceeded

    ran: list[int] = []
    gate = threading.Event()

    def run(items):
        if 0 in items:
            gate.wait(10)  # hold the only lane while the others queue
        ran.extend(items)
        return list(items)

    c = Coalescer(run, lanes=1, max_batch=4, max_delay=0)
    outcome: dict[int, object] = {}
    left = {i: threading.Event() for i in range(3)}

    def call(i, deadline):
        try:
            outcome[i] = c.submit("k", i, deadline, left[i])
        except (DeadlineExceeded, Abandoned) as exc:
            outcome[i] = exc

    first = threading.Thread(target=call, args=(0, None))
    first.start()
    time.sleep(0.1)
    late = time.monotonic() + 0.05 if why == "deadline" else None
    others = [threading.Thread(target=call, args=(1, late)),
              threading.Thread(target=call, args=(2, time.monotonic() + 60))]
    for t in others:
        t.start()
    if why == "abandoned":
        time.sleep(0.1)
        left[1].set()
    time.sleep(0.3)  # 1 is no longer wanted while the lane is held
    gate.set()
    for t in (first, *others):
        t.join(10)
    expected = DeadlineExceeded if why == "deadline" else Abandoned
    assert isinstance(outcome[1], expected) and outcome[0] == 0 and outcome[2] == 2
    assert sorted(ran) == [0, 2]


def test_the_default_workers_hold_enough_calls_for_a_lane_to_batch():
    """The default server's threads hold several calls per lane (one lane per core), so
    concurrent calls meet in batches; with a thread per core (the old default) a call only
    ever found a free lane and ran alone."""
    import asyncio

    from mgsv_sk.serve.admission import Admission
    from mgsv_sk.serve.config import ServeConfig
    from mgsv_sk.serve.cores import usable_cores

    config = ServeConfig()
    cores = usable_cores()  # as the server counts them (a container's quota too)
    sizes: list[int] = []

    def run(items):
        time.sleep(0.05)
        sizes.append(len(items))
        return [i * 10 for i in items]

    lanes = Coalescer(run, lanes=cores)
    admission = Admission(config.workers, config.queue_size)
    calls = 2 * config.workers

    async def clients():
        return await asyncio.gather(*(admission.run(lanes.submit, "k", i) for i in range(calls)))

    try:
        answers = asyncio.run(clients())
    finally:
        admission.shutdown()
    assert [a for a, _ in answers] == [10 * i for i in range(calls)]
    assert max(sizes) >= 4 and sum(sizes) == calls
    assert config.workers >= min(16, 4 * cores)


@pytest.mark.parametrize(("files", "membership", "want"), [
    # cgroup v2: the process's group and its parents; the tightest quota counts
    ({"cpu.max": "max 100000", "pod/cpu.max": "150000 100000",
      "pod/c1/cpu.max": "max 100000"}, "0::/pod/c1\n", 1.5),
    ({"cpu.max": "max 100000"}, "0::/\n", None),  # no quota
    ({"cpu.max": "nonsense"}, "0::/\n", None),
    ({"cpu.max": "0 100000"}, "0::/\n", None),
    # cgroup v1 (the cpu controller's own tree); -1: no quota
    ({"cpu,cpuacct/cpu.cfs_quota_us": "200000", "cpu,cpuacct/cpu.cfs_period_us": "100000"},
     "4:cpu,cpuacct:/\n1:memory:/x\n", 2.0),
    ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, "1:cpu:/\n", None),
    # hybrid: v2 mounted at unified/, v1 without a quota
    ({"unified/k/cpu.max": "50000 100000", "cpu/cpu.cfs_quota_us": "-1",
      "cpu/cpu.cfs_period_us": "100000"}, "1:cpu:/\n0::/k\n", 0.5),
    ({}, "", None),  # no cgroup file system
])
def test_a_containers_cpu_quota_is_read_from_its_control_group(tmp_path, files, membership,
                                                                want):
    from mgsv_sk.serve.cores import cgroup_cpu_quota

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text + "\n")
    assert cgroup_cpu_quota(tmp_path, membership) == want


def test_the_lanes_follow_the_usable_cores_or_the_config(monkeypatch, tmp_path):
    """A 1.5-CPU quota on more cores: 2 usable cores, so 2 lanes and 8 default threads;
    ``lanes`` given: that many, and uploads decode as many at once."""
    import mgsv_sk.serve.cores as cores
    from mgsv_sk.serve.config import ServeConfig, _default_workers
    from mgsv_sk.serve.engine import ServedModel

    monkeypatch.setattr(cores, "_affinity", lambda: 64)
    monkeypatch.setattr(cores, "cgroup_cpu_quota", lambda: 1.5)
    assert cores.usable_cores() == 2 and _default_workers() == 8
    grounder = type("G", (), {"manifest": {"dims": {}}, "n_threads": 1})()
    assert ServedModel(grounder, checksum="0" * 64).lanes == 2
    one = ServedModel(grounder, checksum="0" * 64, lanes=1)
    assert one.lanes == 1 and one._decoding._value == 1
    with pytest.raises(ValueError, match="lanes must be an integer >= 1"):
        ServeConfig(lanes=0)
