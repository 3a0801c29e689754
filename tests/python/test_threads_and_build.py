"""Thread control, determinism across thread counts, build information and the command line."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import xentkit


def test_get_num_threads_positive():
    n = xentkit.get_num_threads()
    assert isinstance(n, int)
    assert n >= 1


def test_set_num_threads_round_trip(restore_threads):
    for n in (1, 2, 3, 7):
        xentkit.set_num_threads(n)
        assert xentkit.get_num_threads() == n
    xentkit.set_num_threads(np.int64(2))
    assert xentkit.get_num_threads() == 2


@pytest.mark.parametrize("bad", [0, -1])
def test_set_num_threads_out_of_range(restore_threads, bad):
    before = xentkit.get_num_threads()
    with pytest.raises(ValueError):
        xentkit.set_num_threads(bad)
    assert xentkit.get_num_threads() == before


@pytest.mark.parametrize("bad", [1.5, "2", None, True])
def test_set_num_threads_not_an_integer(restore_threads, bad):
    with pytest.raises(TypeError):
        xentkit.set_num_threads(bad)


def _bit_equal(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_identical_across_thread_counts(restore_threads, dtype):
    rng = np.random.default_rng(100)
    x = (rng.normal(size=(2048, 1000)) * 3).astype(dtype)
    labels = rng.integers(0, 1000, size=2048)
    labels[::17] = -1
    results = []
    for n in (1, 2, 3, 4):
        xentkit.set_num_threads(n)
        results.append(xentkit.softmax_with_loss(x, labels, ignore_label=-1, loss_weight=0.5))
    for loss, diff in results[1:]:
        assert loss == results[0][0]
        assert _bit_equal(diff, results[0][1])
    assert results[0][0] > 0


def test_softmax_inner_identical_across_thread_counts(restore_threads):
    rng = np.random.default_rng(101)
    x = rng.normal(size=(16, 21, 64, 64)).astype(np.float32)
    labels = rng.integers(0, 21, size=(16, 64, 64)).astype(np.uint8)
    labels[:, :4, :] = 255
    results = []
    for n in (1, 2, 4):
        xentkit.set_num_threads(n)
        results.append(xentkit.softmax_with_loss(x, labels, ignore_label=255))
    for loss, diff in results[1:]:
        assert loss == results[0][0]
        assert _bit_equal(diff, results[0][1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_identical_across_thread_counts(restore_threads, dtype):
    rng = np.random.default_rng(102)
    x = (rng.normal(size=(1 << 10, 1 << 10)) * 4).astype(dtype)
    t = rng.uniform(size=(1 << 10, 1 << 10)).astype(dtype)
    t[:, ::9] = -1
    results = []
    for n in (1, 2, 3, 4):
        xentkit.set_num_threads(n)
        results.append(xentkit.sigmoid_cross_entropy_loss(x, t, ignore_label=-1,
                                                          normalization="valid"))
    for loss, diff in results[1:]:
        assert loss == results[0][0]
        assert _bit_equal(diff, results[0][1])


def test_concurrent_calls_from_python_threads():
    """Calls from several Python threads at once give the same results as sequential calls."""
    rng = np.random.default_rng(103)
    inputs = [(rng.normal(size=(512, 300)), rng.integers(0, 300, size=512)) for _ in range(6)]
    expected = [xentkit.softmax_with_loss(x, y) for x, y in inputs]
    got = [None] * len(inputs)
    errors = []

    def work(i):
        try:
            for _ in range(3):
                got[i] = xentkit.softmax_with_loss(*inputs[i])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    for (loss, diff), (eloss, ediff) in zip(got, expected):
        assert loss == eloss
        assert _bit_equal(diff, ediff)


def _run(args, env_extra=None, timeout=60):
    env = dict(os.environ)
    env.pop("XENTKIT_NUM_THREADS", None)
    if env_extra:
        env.update(env_extra)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_env_variable_sets_thread_count():
    proc = _run(["-c", "import xentkit; print(xentkit.get_num_threads())"],
                {"XENTKIT_NUM_THREADS": "3"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "3"


def test_cuda_flags():
    built = xentkit.cuda_built()
    available = xentkit.cuda_available()
    assert isinstance(built, bool)
    assert isinstance(available, bool)
    if not built:
        assert available is False


def test_version():
    assert isinstance(xentkit.__version__, str)
    assert xentkit.__version__
    assert xentkit.__version__[0].isdigit()


def test_public_names():
    for name in ("sigmoid_cross_entropy_loss", "softmax_with_loss", "LabelError",
                 "get_num_threads", "set_num_threads", "cuda_available", "cuda_built"):
        assert hasattr(xentkit, name), name
    for name in xentkit.__all__:
        assert hasattr(xentkit, name), name


def test_all_lists_every_public_function():
    public = {"sigmoid_cross_entropy_loss", "softmax_with_loss", "LabelError", "get_num_threads",
              "set_num_threads", "cuda_available", "cuda_built"}
    assert public <= set(xentkit.__all__)


def test_demo_command():
    proc = _run(["-m", "xentkit", "demo"], timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAILED" not in proc.stdout
    assert "loss" in proc.stdout


def test_version_flag():
    proc = _run(["-m", "xentkit", "--version"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == xentkit.__version__
