"""Concurrency and resource use: many Python threads calling at once, the thread count changed while
calls are in flight, and no memory growth over many calls.

The CPU kernels release the GIL and promise bit-identical results for any thread count, so every
concurrent result must equal, bit for bit, the result of the same call made alone (with one kernel
thread and with the default count). Inputs are shared and read-only.
"""

from __future__ import annotations

import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import xentkit

PYTHON_THREADS = 12
ROUNDS = {"large": 4, "small": 60}  # rounds of all 12 calls per Python thread


def _readonly(a):
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


def _inputs(seed, n, c):
    """Shared inputs for one size: logits (n, c), class indices, probabilities, weights."""
    rng = np.random.default_rng(seed)
    x = _readonly((rng.standard_normal((n, c)) * 3).astype(np.float32))
    x64 = _readonly(rng.standard_normal((n, c)) * 3)
    y = _readonly(rng.integers(0, c, size=n).astype(np.int64))
    yi = rng.integers(0, c, size=n)
    yi[rng.random(n) < 0.1] = -100
    yi = _readonly(yi.astype(np.int32))
    q = _readonly(rng.random((n, c)).astype(np.float32))
    p = _readonly(rng.uniform(0.01, 0.99, size=(n, c)).astype(np.float32))
    w = _readonly(rng.uniform(0.5, 2.0, size=c).astype(np.float32))
    return dict(x=x, x64=x64, y=y, yi=yi, q=q, p=p, w=w)


def _calls(d):
    """(name, thunk) for every public function; each thunk returns a tuple of results."""
    return [
        ("sigmoid_cross_entropy_loss", lambda: xentkit.sigmoid_cross_entropy_loss(d["x"], d["p"])),
        ("softmax_with_loss", lambda: xentkit.softmax_with_loss(d["x64"], d["y"], prob=True)),
        ("binary_cross_entropy",
         lambda: xentkit.binary_cross_entropy(d["p"], d["q"], d["w"], reduction="sum", grad=True)),
        ("binary_cross_entropy_with_logits",
         lambda: xentkit.binary_cross_entropy_with_logits(d["x"], d["q"], pos_weight=d["w"],
                                                          grad=True)),
        ("cross_entropy",
         lambda: xentkit.cross_entropy(d["x"], d["yi"], d["w"], label_smoothing=0.1, grad=True)),
        ("cross_entropy(probabilities)",
         lambda: xentkit.cross_entropy(d["x"], d["q"], reduction="none", grad=True)),
        ("nll_loss", lambda: xentkit.nll_loss(d["x64"], d["y"], reduction="sum", grad=True)),
        ("log_softmax", lambda: (xentkit.log_softmax(d["x"], dim=0),)),
        ("softmax", lambda: (xentkit.softmax(d["x64"]),)),
        ("sigmoid_cross_entropy_with_logits",
         lambda: xentkit.sigmoid_cross_entropy_with_logits(d["q"], d["x"], grad=True)),
        ("softmax_cross_entropy_with_logits",
         lambda: xentkit.softmax_cross_entropy_with_logits(d["q"], d["x"], axis=0, grad=True)),
        ("sparse_softmax_cross_entropy_with_logits",
         lambda: xentkit.sparse_softmax_cross_entropy_with_logits(d["y"], d["x64"], grad=True)),
    ]


def _bits(result):
    """A result as bytes (floats by their bit patterns), for bit-for-bit comparison."""
    if not isinstance(result, tuple):
        result = (result,)
    out = []
    for r in result:
        if isinstance(r, np.ndarray):
            out.append((r.dtype.str, r.shape, r.tobytes()))
        else:
            out.append(np.float64(r).tobytes())
    return tuple(out)


# Large: 2**19 elements per array (above the size where the kernels start their own threads);
# small: a few elements (the calling thread only).
SIZES = {"large": (4096, 128), "small": (7, 5)}


@pytest.fixture(scope="module", params=sorted(SIZES))
def workload(request):
    n, c = SIZES[request.param]
    d = _inputs(17, n, c)
    before = xentkit.get_num_threads()
    try:
        xentkit.set_num_threads(1)
        single = {name: _bits(call()) for name, call in _calls(d)}
        xentkit.set_num_threads(max(2, os.cpu_count() or 2))
        default = {name: _bits(call()) for name, call in _calls(d)}
    finally:
        xentkit.set_num_threads(before)
    assert single == default, "results differ between 1 and several kernel threads"
    return request.param, d, single


def _hammer(d, expected, rounds, seed):
    """Runs every call `rounds` times in a shuffled order; returns the number checked and the
    names of any that differed from the expected bits."""
    rng = random.Random(seed)
    calls = _calls(d)
    checked, wrong = 0, []
    for _ in range(rounds):
        rng.shuffle(calls)
        for name, call in calls:
            if _bits(call()) != expected[name]:
                wrong.append(name)
            checked += 1
    return checked, wrong


def _run_threads(d, expected, rounds):
    with ThreadPoolExecutor(PYTHON_THREADS) as pool:
        futures = [pool.submit(_hammer, d, expected, rounds, seed) for seed in range(PYTHON_THREADS)]
        results = [f.result() for f in futures]
    checked = sum(r[0] for r in results)
    wrong = sorted({name for r in results for name in r[1]})
    return checked, wrong


def test_concurrent_calls_are_bit_identical_to_single_threaded_ones(workload, restore_threads):
    size, d, expected = workload
    snapshot = {k: v.copy() for k, v in d.items()}
    checked, wrong = _run_threads(d, expected, ROUNDS[size])
    assert wrong == [], f"{size}: concurrent results differ for {wrong}"
    assert checked == PYTHON_THREADS * ROUNDS[size] * len(expected)
    for k, v in d.items():
        np.testing.assert_array_equal(v, snapshot[k])


def test_thread_count_changes_during_calls_keep_results_identical(workload, restore_threads):
    size, d, expected = workload
    stop = threading.Event()
    changes = []

    def flipper():
        rng = random.Random(3)
        while not stop.is_set():
            n = rng.randint(1, 8)
            xentkit.set_num_threads(n)
            assert xentkit.get_num_threads() >= 1
            changes.append(n)

    flip = threading.Thread(target=flipper)
    flip.start()
    try:
        checked, wrong = _run_threads(d, expected, ROUNDS[size])
    finally:
        stop.set()
        flip.join()
    assert wrong == [], f"{size}: results changed with the thread count for {wrong}"
    assert len(changes) > 10 and checked == PYTHON_THREADS * ROUNDS[size] * len(expected)


def test_bad_thread_counts_raise_while_calls_run(restore_threads):
    d = _inputs(5, 64, 8)
    expected = {name: _bits(call()) for name, call in _calls(d)}
    errors = []

    def bad_setter():
        for n in (0, -1, -(2**31)) * 50:
            try:
                xentkit.set_num_threads(n)
            except ValueError as err:
                errors.append(str(err))

    t = threading.Thread(target=bad_setter)
    t.start()
    checked, wrong = _run_threads(d, expected, 2)
    t.join()
    assert wrong == [] and checked > 0
    assert len(errors) == 150
    assert xentkit.get_num_threads() == restore_threads


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_resident_memory_stays_flat_over_many_calls():
    """10**5 small calls of every function (gradients, in-place outputs, raised errors included):
    the resident set after a warm-up does not grow by more than a few MiB."""
    d = _inputs(9, 6, 4)
    x = np.array(d["x"])
    bad = np.array([0, 1, 9, 2, 3, 1], dtype=np.int64)
    grad = np.empty_like(x)
    calls = [call for _, call in _calls(d)]
    calls.append(lambda: xentkit.cross_entropy(x, d["y"], grad=grad))
    calls.append(lambda: xentkit.sigmoid_cross_entropy_loss(x.copy(), d["p"], diff=True))

    def failing():
        try:
            xentkit.softmax_with_loss(x, bad)
        except xentkit.LabelError:
            return
        raise AssertionError("expected LabelError")

    calls.append(failing)

    def run(n):
        for i in range(n):
            calls[i % len(calls)]()

    run(20_000)
    start = _rss_bytes()
    run(100_000)
    growth = _rss_bytes() - start
    assert growth < 4 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MiB over 1e5 calls"


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs os.sched_setaffinity")
def test_default_thread_count_is_the_cpus_the_process_may_use():
    # A process pinned to one CPU (taskset -c 0, a one-CPU cpuset) starts with one thread, so
    # its calls never wait on a second thread that has no CPU of its own; the results are the
    # same either way.
    import hashlib
    import subprocess
    import sys

    code = (
        "import os, sys\n"
        "os.environ.pop('XENTKIT_NUM_THREADS', None)\n"
        "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
        "import hashlib, numpy as np, xentkit\n"
        "x = np.random.default_rng(0).normal(size=(70000, 10)).astype(np.float32)\n"
        "t = np.random.default_rng(1).integers(0, 10, 70000)\n"
        "l, g = xentkit.cross_entropy(x, t, grad=True)\n"
        "sys.stdout.write(f'{xentkit.get_num_threads()} {l!r} {hashlib.sha256(g.tobytes()).hexdigest()}')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "XENTKIT_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True, timeout=120).stdout.split()
    assert out[0] == "1"
    x = np.random.default_rng(0).normal(size=(70000, 10)).astype(np.float32)
    t = np.random.default_rng(1).integers(0, 10, 70000)
    before = xentkit.get_num_threads()
    try:
        xentkit.set_num_threads(2)
        loss, grad = xentkit.cross_entropy(x, t, grad=True)
    finally:
        xentkit.set_num_threads(before)
    assert out[1] == repr(loss) and out[2] == hashlib.sha256(grad.tobytes()).hexdigest()
