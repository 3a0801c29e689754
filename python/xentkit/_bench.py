"""``xentkit bench``: xentkit against PyTorch (when installed) and a NumPy copy of the same bytes.

Every case is timed as the median of ``repeat`` runs; the runs of xentkit, PyTorch and the copy
alternate, so a slow moment of a shared machine hits all three alike. Ratios are taken within the
run: ``torch/xk`` is how many times faster xentkit is, ``xk/copy`` how many copies of the logits
(``np.copyto``, the same bytes read and written) one xentkit call costs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

# (name, shape, class axis); the element count is the logits' size.
SOFTMAX_SHAPES = [
    ("4096x1000", (4096, 1000)),
    ("512x32000", (512, 32000)),
    ("65536x10", (65536, 10)),
    ("8x21x128x128", (8, 21, 128, 128)),
]
QUICK_SHAPES = [("256x1000", (256, 1000)), ("2x21x32x32", (2, 21, 32, 32))]


def _tiled_copy(x, out, tile=256):
    """np.copyto of x into out tile by tile along the positions (every class of `tile` positions
    at a time, for all outer indices per call), the way the kernels visit a class axis that is
    not last: `c` runs of `tile` floats, `inner` floats apart."""
    n, c = x.shape[:2]
    x3 = x.reshape(n, c, -1)
    o3 = out.reshape(n, c, -1)
    inner = x3.shape[2]

    def go():
        for s in range(0, inner, tile):
            np.copyto(o3[:, :, s:s + tile], x3[:, :, s:s + tile])
    return go


def _median(samples):
    return statistics.median(samples)


def _settle(limit=0.05, quiet=0.0002):
    """Waits (at most `limit` seconds) until no other thread of this process uses a CPU.

    JAX/XLA's runtime goes on working for a few milliseconds after ``block_until_ready``
    returns (its other threads' CPU time); pinned to one core, the next timed call shared the
    core with that work and paid for it (a BCE 4096x1000 call right after JAX's took 1.5x its
    time). Each 1 ms sleep that leaves the process's CPU time, less this thread's, under `quiet`
    ends the wait."""
    end = time.perf_counter() + limit
    while time.perf_counter() < end:
        p0, t0 = time.process_time(), time.thread_time()
        time.sleep(0.001)
        if (time.process_time() - p0) - (time.thread_time() - t0) < quiet:
            return


def _time_group(fns, repeat, settle=False):
    """Median seconds of each callable, the callables run in turn `repeat` times after a warm-up.
    With settle=True every timed call starts once the process's other threads are idle
    (_settle)."""
    for fn in fns.values():
        if fn is not None:
            fn()
    samples = {k: [] for k, fn in fns.items() if fn is not None}
    for _ in range(repeat):
        for k, fn in fns.items():
            if fn is None:
                continue
            if settle:
                _settle()
            start = time.perf_counter()
            fn()
            samples[k].append(time.perf_counter() - start)
    return {k: _median(v) for k, v in samples.items()}


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _row(case, elements, times, xk="xk", base="torch"):
    per = 1e9 / elements
    out = {"case": case, "elements": elements}
    for k, v in times.items():
        out[k + "_ns"] = v * per
    if base in times and xk in times:
        out["torch/xk"] = times[base] / times[xk]
    if "copy" in times and xk in times:
        out["xk/copy"] = times[xk] / times["copy"]
    return out


def run(repeat=7, threads=1, quick=False, seed=0):
    """(info, rows) of the main table; the thread counts are put back afterwards."""
    return _threads_put_back(_run, repeat, threads, quick, seed)


def _threads_put_back(body, *args):
    """body(xentkit, torch or None, *args), xentkit's and torch's thread counts put back after."""
    import xentkit

    torch = _torch()
    before = xentkit.get_num_threads()
    torch_before = None if torch is None else torch.get_num_threads()
    try:
        return body(xentkit, torch, *args)
    finally:
        xentkit.set_num_threads(before)
        if torch is not None:
            torch.set_num_threads(torch_before)


def _run(xentkit, torch, repeat, threads, quick, seed):
    xentkit.set_num_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)
        F = torch.nn.functional
    rng = np.random.default_rng(seed)
    rows = []
    shapes = QUICK_SHAPES if quick else SOFTMAX_SHAPES

    for name, shape in shapes:
        x = rng.normal(size=shape).astype(np.float32)
        c = shape[1]
        t = rng.integers(0, c, size=(shape[0],) + shape[2:])
        out = np.empty_like(x)
        tx = ty = None
        if torch is not None:
            tx = torch.from_numpy(x.copy()).requires_grad_()
            ty = torch.from_numpy(t)

        def torch_fb():
            tx.grad = None
            F.cross_entropy(tx, ty).backward()

        def torch_f():
            with torch.no_grad():
                F.cross_entropy(tx, ty)

        have = torch is not None
        tiled = _tiled_copy(x, out) if len(shape) > 2 else None
        times = _time_group({
            "xk": lambda: xentkit.cross_entropy(x, t, grad=out),
            "caffe": lambda: xentkit.softmax_with_loss(x, t, diff=out),
            "torch": torch_fb if have else None,
            "copy": lambda: np.copyto(out, x),
            "tiled": tiled,
        }, repeat)
        r = _row(f"softmax loss+grad {name}", x.size, times)
        r["caffe/copy"] = times["caffe"] / times["copy"]
        if have:
            r["torch/caffe"] = times["torch"] / times["caffe"]
            r["torch/8_ns"] = r["torch_ns"] / 8
        r["2copy_ns"] = 2 * r["copy_ns"]
        rows.append(r)
        times = _time_group({
            "xk": lambda: xentkit.cross_entropy(x, t),
            "caffe": lambda: xentkit.softmax_with_loss(x, t, diff=False),
            "torch": torch_f if have else None,
            "copy": lambda: np.copyto(out, x),
            "exp": lambda: np.exp(x, out=out),
        }, repeat)
        r = _row(f"softmax loss only {name}", x.size, times)
        if have:
            r["torch/caffe"] = times["torch"] / times["caffe"]
            r["torch/6_ns"] = r["torch_ns"] / 6
        rows.append(r)

    shape = (256, 1000) if quick else (4096, 1000)
    x = rng.normal(size=shape).astype(np.float32)
    tt = rng.uniform(size=shape).astype(np.float32)
    out = np.empty_like(x)
    have = torch is not None
    if have:
        tx = torch.from_numpy(x.copy()).requires_grad_()
        ttt = torch.from_numpy(tt)

        def torch_bce():
            tx.grad = None
            F.binary_cross_entropy_with_logits(tx, ttt).backward()
    times = _time_group({
        "xk": lambda: xentkit.binary_cross_entropy_with_logits(x, tt, grad=out),
        "caffe": lambda: xentkit.sigmoid_cross_entropy_loss(x, tt, diff=out),
        "torch": torch_bce if have else None,
        "copy": lambda: np.copyto(out, x),
    }, repeat)
    r = _row(f"sigmoid loss+grad {shape[0]}x{shape[1]}", x.size, times)
    if have:
        r["torch/caffe"] = times["torch"] / times["caffe"]
    rows.append(r)

    # float16 logits (computed in float32) against float32, per element.
    x32 = rng.normal(size=shape).astype(np.float32)
    x16 = x32.astype(np.float16)
    t = rng.integers(0, shape[1], size=shape[0])
    g32 = np.empty_like(x32)
    g16 = np.empty_like(x16)
    times = _time_group({
        "xk": lambda: xentkit.cross_entropy(x16, t, grad=g16),
        "xk32": lambda: xentkit.cross_entropy(x32, t, grad=g32),
    }, repeat)
    r = _row(f"float16 softmax loss+grad {shape[0]}x{shape[1]}", x16.size, times)
    r["f16/f32"] = times["xk"] / times["xk32"]
    rows.append(r)

    # A tiny call: 1 x 10 logits, one label (microseconds per call, many calls per sample).
    xs = rng.normal(size=(1, 10)).astype(np.float32)
    ts = np.array([3])
    calls = 2000

    def many(fn):
        def go():
            for _ in range(calls):
                fn()
        return go

    fns = {"xk": many(lambda: xentkit.cross_entropy(xs, ts))}
    if have:
        sx, sy = torch.from_numpy(xs), torch.from_numpy(ts)
        fns["torch"] = many(lambda: F.cross_entropy(sx, sy))
    times = _time_group(fns, repeat)
    r = {"case": "tiny call 1x10 (us per call)", "elements": 10}
    for k, v in times.items():
        r[k + "_us"] = v / calls * 1e6
    if "torch" in times:
        r["torch/xk"] = times["torch"] / times["xk"]
    rows.append(r)

    return _info(xentkit, torch, threads, repeat), rows


def _info(xentkit, torch, threads, repeat, **more):
    """What a table was measured with (more: other versions, after torch's)."""
    return {"xentkit": xentkit.__version__, "simd": xentkit.simd_level(), "threads": threads,
            "repeat": repeat, "torch": None if torch is None else torch.__version__, **more,
            "numpy": np.__version__, "python": platform.python_version(), "machine": _machine()}


def run_threads(repeat=7, quick=False, seed=0):
    """One thread against two on the large shapes (bit-identical results checked)."""
    import xentkit

    before = xentkit.get_num_threads()
    rng = np.random.default_rng(seed)
    rows = []
    shapes = QUICK_SHAPES if quick else SOFTMAX_SHAPES
    try:
        for name, shape in shapes:
            x = rng.normal(size=shape).astype(np.float32)
            t = rng.integers(0, shape[1], size=(shape[0],) + shape[2:])
            g1 = np.empty_like(x)
            g2 = np.empty_like(x)

            def one():
                xentkit.set_num_threads(1)
                return xentkit.cross_entropy(x, t, grad=g1)

            def two():
                xentkit.set_num_threads(2)
                return xentkit.cross_entropy(x, t, grad=g2)

            times = _time_group({"t1": one, "t2": two}, repeat)
            same = one()[0] == two()[0] and g1.tobytes() == g2.tobytes()
            rows.append({"case": f"softmax loss+grad {name}", "elements": x.size,
                         "t1_ns": times["t1"] * 1e9 / x.size, "t2_ns": times["t2"] * 1e9 / x.size,
                         "speedup": times["t1"] / times["t2"], "bit-identical": same})
    finally:
        xentkit.set_num_threads(before)
    return rows


TORCH_SHAPES = SOFTMAX_SHAPES
TORCH_QUICK_SHAPES = QUICK_SHAPES[:1]


def run_torch(repeat=7, threads=1, quick=False, seed=0):
    """One training step's loss forward + backward on CPU tensors: xentkit.torch against
    F.cross_entropy eager and under torch.compile, and against the raw NumPy call on the same
    data (``grad=True``: it allocates its gradient, as the tensor call does). Rows are empty
    without PyTorch."""
    torch = _torch()
    if torch is None:
        return []
    import xentkit
    import xentkit.torch as xt

    F = torch.nn.functional
    before, torch_before = xentkit.get_num_threads(), torch.get_num_threads()
    xentkit.set_num_threads(threads)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    rows = []
    try:
        compiled = torch.compile(lambda x, t: F.cross_entropy(x, t), dynamic=False)
        for name, shape in (TORCH_QUICK_SHAPES if quick else TORCH_SHAPES):
            x = rng.normal(size=shape).astype(np.float32)
            t = rng.integers(0, shape[1], size=(shape[0],) + shape[2:])
            out = np.empty_like(x)
            tx = torch.from_numpy(x.copy()).requires_grad_()
            ty = torch.from_numpy(t)

            def step(loss_fn):
                def go():
                    tx.grad = None
                    loss_fn(tx, ty).backward()
                return go

            times = _time_group({
                "xt": step(xt.cross_entropy),
                "eager": step(F.cross_entropy),
                "compile": step(compiled),
                "numpy": lambda: xentkit.cross_entropy(x, t, grad=True),
                "copy": lambda: np.copyto(out, x),
            }, repeat)
            r = _row(f"torch fwd+bwd {name}", x.size, times, xk="xt", base="eager")
            r["eager/xt"] = times["eager"] / times["xt"]
            r["compile/xt"] = times["compile"] / times["xt"]
            r["xt/numpy"] = times["xt"] / times["numpy"]
            rows.append(r)

        xs = torch.randn(1, 10, requires_grad=True)
        ts = torch.tensor([3])
        calls = 500

        def many(loss_fn):
            def go():
                for _ in range(calls):
                    xs.grad = None
                    loss_fn(xs, ts).backward()
            return go

        times = _time_group({"xt": many(xt.cross_entropy), "eager": many(F.cross_entropy)},
                            repeat)
        rows.append({"case": "torch fwd+bwd 1x10 (us per step)", "elements": 10,
                     "xt_us": times["xt"] / calls * 1e6, "eager_us": times["eager"] / calls * 1e6,
                     "eager/xt": times["eager"] / times["xt"]})
    finally:
        xentkit.set_num_threads(before)
        torch.set_num_threads(torch_before)
    return rows


# (name, N, D, V) of the fused linear cross-entropy table.
LINEAR_SHAPES = [("2048x256x32000", 2048, 256, 32000), ("2048x512x128256", 2048, 512, 128256)]
LINEAR_QUICK_SHAPES = [("256x64x4000", 256, 64, 4000)]

# Peak resident memory of one call in a fresh process: the peak (VmHWM) is reset to the current
# resident set once the inputs and BLAS's buffers are in place, so its growth during the call is
# what the call itself held at its peak (outputs included).
_PEAK_SCRIPT = """
import json, sys
import numpy as np
import xentkit
n, d, v, grad = (int(a) for a in sys.argv[1:5])
rng = np.random.default_rng(0)
x = rng.standard_normal((n, d), dtype=np.float32)
w = rng.standard_normal((v, d), dtype=np.float32) * 0.05
t = rng.integers(0, v, n)
np.matmul(x[:8], w.T[:, :8])
xentkit.linear_cross_entropy(x[:64], w, t[:64], chunk_size=32)
def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM := VmRSS
before = max(status("VmRSS:"), status("VmHWM:"))
out = xentkit.linear_cross_entropy(x, w, t, grad=bool(grad))
print(json.dumps({"before": before, "after": status("VmHWM:")}))
"""


def linear_peak_bytes(n, d, v, grad, timeout=600):
    """Bytes the peak resident set grew by during one float32 linear_cross_entropy call (its
    outputs included), measured in a fresh single-threaded process."""
    import subprocess

    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", XENTKIT_NUM_THREADS="1",
               OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(n), str(d), str(v),
                          str(int(grad))], capture_output=True, text=True, env=env,
                         timeout=timeout, check=True)
    m = json.loads(out.stdout.strip().splitlines()[-1])
    # the kernel updates the resident-set counters in batches of pages, so a call that needs
    # no new memory can read a few KiB below its start: that is zero growth
    return max(0, m["after"] - m["before"])


def run_linear(repeat=7, threads=1, quick=False, seed=0, memory=True):
    """The fused linear cross-entropy, float32: forward+backward against the three matrix
    products alone (np.matmul, same BLAS), scoring against one product, and PyTorch's
    F.linear_cross_entropy (chunked options and reference path), torch.compile of the reference
    and xentkit.torch, on the same data. Set OPENBLAS_NUM_THREADS / pin the process for
    one-thread figures; `threads` sets xentkit's and torch's thread counts."""
    import xentkit

    torch = _torch()
    before = xentkit.get_num_threads()
    torch_before = None if torch is None else torch.get_num_threads()
    xentkit.set_num_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    rows = []
    try:
        for name, n, d, v in (LINEAR_QUICK_SHAPES if quick else LINEAR_SHAPES):
            x = rng.standard_normal((n, d), dtype=np.float32)
            w = (rng.standard_normal((v, d), dtype=np.float32) / np.sqrt(d)).astype(np.float32)
            t = rng.integers(0, v, n)
            logits = np.empty((n, v), np.float32)
            gx = np.empty((n, d), np.float32)
            gw = np.empty((v, d), np.float32)

            def gemm3():
                np.matmul(x, w.T, out=logits)
                np.matmul(logits, w, out=gx)
                np.matmul(logits.T, x, out=gw)

            fns = {
                "xk": lambda: xentkit.linear_cross_entropy(x, w, t, grad=True),
                "gemm3": gemm3,
                "score": lambda: xentkit.linear_cross_entropy(x, w, t, reduction="none"),
                "gemm1": lambda: np.matmul(x, w.T, out=logits),
            }
            if torch is not None and hasattr(torch.nn, "LinearCrossEntropyOptions"):
                import xentkit.torch as xt

                F = torch.nn.functional
                tx = torch.from_numpy(x.copy()).requires_grad_()
                tw = torch.from_numpy(w.copy()).requires_grad_()
                tt = torch.from_numpy(t)
                opts = torch.nn.LinearCrossEntropyOptions()

                def step(fn):
                    def go():
                        tx.grad = tw.grad = None
                        fn().backward()
                    return go

                compiled = torch.compile(lambda a, b, c: F.cross_entropy(F.linear(a, b), c),
                                         dynamic=False)
                fns.update({
                    "xt": step(lambda: xt.linear_cross_entropy(tx, tw, tt)),
                    "chunked": step(lambda: F.linear_cross_entropy(tx, tw, tt, options=opts)),
                    "reference": step(lambda: F.linear_cross_entropy(tx, tw, tt)),
                    "compile": step(lambda: compiled(tx, tw, tt)),
                })
            times = _time_group(fns, repeat)
            r = {"case": f"linear CE {name}", "elements": n * v}
            for k, sec in times.items():
                r[k + "_ms"] = sec * 1e3
            r["xk/gemm3"] = times["xk"] / times["gemm3"]
            r["score/gemm1"] = times["score"] / times["gemm1"]
            for peer in ("chunked", "reference", "compile", "xt"):
                if peer in times:
                    r[f"{peer}/xk"] = times[peer] / times["xk"]
            if memory:
                full = n * v * 4
                outputs = (n * d + v * d) * 4  # grad_input and grad_W
                r["peak/logits"] = max(0, linear_peak_bytes(n, d, v, True) - outputs) / full
                r["score peak/logits"] = max(0, linear_peak_bytes(n, d, v, False) - n * 4) / full
            rows.append(r)
    finally:
        xentkit.set_num_threads(before)
        if torch is not None:
            torch.set_num_threads(torch_before)
    return rows


# (name, shape) of the peers table, float32, class axis 1.
PEER_SHAPES = [
    ("4096x1000", (4096, 1000)),
    ("512x32000", (512, 32000)),
    ("65536x10", (65536, 10)),
    ("16384x100", (16384, 100)),
    ("65536x2", (65536, 2)),
    ("8x21x128x128", (8, 21, 128, 128)),
    ("4x150x64x64", (4, 150, 64, 64)),
    ("8x2x256x256", (8, 2, 256, 256)),  # binary segmentation, class axis 1
]
PEER_QUICK_SHAPES = [("256x1000", (256, 1000)), ("2048x10", (2048, 10)),
                     ("2x21x16x16", (2, 21, 16, 16))]
PEER_BCE_SHAPE, PEER_BCE_QUICK_SHAPE = (4096, 1000), (256, 1000)
PEERS = ("eager", "compile", "jax")
# What one-thread JAX figures need: XLA reads XLA_FLAGS once, when jax makes its CPU client, and
# (jax 0.10) still runs its intra-op pool on every CPU the process may use, flags or not; only
# pinning the process (taskset -c 0) keeps it to one core.
JAX_ONE_THREAD_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _have(module):
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _jax(threads):
    """(jax, optax) or None. With threads == 1 and jax not yet imported, JAX_ONE_THREAD_FLAGS is
    added to XLA_FLAGS first (still pin the process with taskset -c 0 for one-thread figures)."""
    if not (_have("jax") and _have("optax")):
        return None
    if threads == 1 and "jax" not in sys.modules:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_cpu_multi_thread_eigen" not in flags:
            os.environ["XLA_FLAGS"] = (flags + " " + JAX_ONE_THREAD_FLAGS).strip()
    try:
        import jax
        import optax
        jax.devices("cpu")
    except Exception:  # a broken install is a missing peer, never a failed benchmark
        return None
    return jax, optax


def _torch_steps(torch):
    """torch.compile'd functions returning (grad, loss) of the mean cross-entropy / BCE with logits
    (torch.func.grad_and_value: Dynamo traces forward and backward into one graph, no break,
    and Inductor compiles it; faster than compiling the forward and calling .backward()). Each is
    its own code object, so each has its own recompile budget (one per shape, dynamic=False)."""
    F = torch.nn.functional

    def ce_step(z, y):
        return torch.func.grad_and_value(F.cross_entropy)(z, y)

    def bce_step(z, y):
        return torch.func.grad_and_value(F.binary_cross_entropy_with_logits)(z, y)

    return (torch.compile(ce_step, dynamic=False), torch.compile(bce_step, dynamic=False))


def _jax_steps(jax, optax):
    def ce(z, y):
        return optax.softmax_cross_entropy_with_integer_labels(z, y).mean()

    def bce(z, y):
        return optax.sigmoid_binary_cross_entropy(z, y).mean()

    return jax.jit(jax.value_and_grad(ce)), jax.jit(jax.value_and_grad(bce))


class _CpuClock:
    """Wraps a callable, adding up the process's CPU time and the wall time of its calls (how many
    cores a peer really used)."""

    def __init__(self):
        self.cpu = self.wall = 0.0

    def wrap(self, fn):
        def go():
            c, w = time.process_time(), time.perf_counter()
            fn()
            self.cpu += time.process_time() - c
            self.wall += time.perf_counter() - w
        return go


def run_peers(repeat=7, threads=1, quick=False, seed=0):
    """(info, rows): xentkit's float32 loss + gradient against the floor of the call on this
    machine and against its peers, each only when installed: PyTorch eager (F.cross_entropy
    forward + backward), torch.compile of forward + backward (mode default, warmed up untimed)
    and JAX/XLA (jax.jit of jax.value_and_grad of optax's loss; class axis last for the spatial
    shapes, transposed untimed, its best layout). All alternate within one run (medians).

    The floor is what moving the bytes costs: max(np.copyto of the logits, np.exp of them) per
    element; for BCE, max(1.5 x the copy, the exp), as it reads logits and targets and writes the
    gradient. With quick=True, torch.compile runs on the first shape only (its warm-up is seconds
    per shape). One-thread JAX figures need the process pinned (taskset -c 0): XLA_FLAGS (set
    here when jax is not yet imported and threads == 1) does not stop its intra-op pool;
    info["jax cpu/wall"] is the cores it used on average while timed. Where the AVX-512 kernels
    run, the AVX2 ones are timed beside them (avx2/xk), for CPUs without AVX-512."""
    return _threads_put_back(_run_peers, repeat, threads, quick, seed)


def _run_peers(xentkit, torch, repeat, threads, quick, seed):
    xentkit.set_num_threads(threads)
    skipped = {}
    compiled = None
    if torch is None:
        skipped["eager"] = skipped["compile"] = "torch not installed"
    else:
        torch.set_num_threads(threads)
        F = torch.nn.functional
        try:
            compiled = _torch_steps(torch)
        except Exception as e:  # noqa: BLE001 - a peer that cannot run is left out
            skipped["compile"] = f"{type(e).__name__}: {e}"
    jx = _jax(threads)
    if jx is None:
        skipped["jax"] = "jax/optax not installed"
        jax = optax = None
    else:
        jax, optax = jx
        jax_ce, jax_bce = _jax_steps(jax, optax)
        jax_exp = jax.jit(jax.numpy.exp)
    clock = _CpuClock()
    rng = np.random.default_rng(seed)

    def warm(name, fn):
        """fn once, untimed (compilation); None, and the reason noted, when it fails."""
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            skipped.setdefault(name, f"{type(e).__name__}: {str(e)[:200]}")
            return None
        return fn

    cases = []
    for i, (name, shape) in enumerate(PEER_QUICK_SHAPES if quick else PEER_SHAPES):
        x = rng.normal(size=shape).astype(np.float32)
        t = rng.integers(0, shape[1], size=(shape[0],) + shape[2:])
        cases.append(("CE", f"CE loss+grad {name}", x, t, not quick or i == 0))
    shape = PEER_BCE_QUICK_SHAPE if quick else PEER_BCE_SHAPE
    cases.append(("BCE", f"BCE loss+grad {shape[0]}x{shape[1]}",
                  rng.normal(size=shape).astype(np.float32),
                  rng.uniform(size=shape).astype(np.float32), not quick))

    level = xentkit.simd_level()
    avx2_too = level == "avx512" and "avx2" in xentkit.simd_levels_available()
    rows = []
    for kind, case, x, t, do_compile in cases:
        out = np.empty_like(x)
        bce = kind == "BCE"
        if bce:
            fns = {"xk": lambda: xentkit.binary_cross_entropy_with_logits(x, t, grad=out)}
        else:
            fns = {"xk": lambda: xentkit.cross_entropy(x, t, grad=out)}
        if avx2_too:  # the AVX2 kernels beside the AVX-512 ones, call by call
            def on_avx2(fn=fns["xk"]):
                xentkit.set_simd_level("avx2")
                try:
                    fn()
                finally:
                    xentkit.set_simd_level(level)
            fns["avx2"] = on_avx2
        fns["copy"] = lambda: np.copyto(out, x)
        fns["exp"] = lambda: np.exp(x, out=out)
        # The peers' own vectorised exp over the same logits (PyTorch's into a buffer, XLA's
        # jitted): a loss + gradient reads every logit, takes its exp and writes its gradient
        # at least once, so the fastest of these passes bounds what any such call can take.
        if torch is not None:
            tx0, tout = torch.from_numpy(x), torch.from_numpy(out)
            fns["texp"] = warm("texp", lambda tx0=tx0, tout=tout: torch.exp(tx0, out=tout))
        if jax is not None:
            jx0 = jax.device_put(x)
            fns["xexp"] = warm("xexp", lambda jx0=jx0: jax.block_until_ready(jax_exp(jx0)))
        if torch is not None:
            tx = torch.from_numpy(x.copy()).requires_grad_()
            ty = torch.from_numpy(t.copy())
            loss = F.binary_cross_entropy_with_logits if bce else F.cross_entropy

            def eager(tx=tx, ty=ty, loss=loss):
                tx.grad = None
                loss(tx, ty).backward()
            fns["eager"] = warm("eager", eager)
            if compiled is not None and do_compile:
                step = compiled[1 if bce else 0]
                cx = torch.from_numpy(x.copy())
                fns["compile"] = warm("compile", lambda step=step, cx=cx, ty=ty: step(cx, ty))
        if jax is not None:
            # class axis last (the layout XLA's reduction wants), moved before timing
            zx = x if x.ndim == 2 else np.ascontiguousarray(np.moveaxis(x, 1, -1))
            jz = jax.device_put(zx)
            jy = jax.device_put(t if bce else t.astype(np.int32))
            step = jax_bce if bce else jax_ce
            fns["jax"] = warm("jax", clock.wrap(
                lambda step=step, jz=jz, jy=jy: jax.block_until_ready(step(jz, jy))))
        # Two groups, each alternating call by call: xentkit with the floor (the same arrays,
        # so each call finds them where the one before left them) and xentkit with the peers
        # (each peer holds its own copy of the data, so every call there starts with colder
        # caches; xentkit's time in that group is what the peers are compared with). Each
        # timed call starts once the threads JAX's call left working are idle (_settle).
        near = ("xk", "avx2", "copy", "exp", "texp", "xexp")
        times = _time_group({k: f for k, f in fns.items() if k in near and f is not None}, repeat,
                            settle=True)
        r = _row(case, x.size, times, base="-")
        copy_ns = r["copy_ns"] * (1.5 if bce else 1.0)
        r["floor_ns"] = max(copy_ns, r["exp_ns"])
        r["xk/floor"] = r["xk_ns"] / r["floor_ns"]
        if "avx2" in times:
            r["avx2/xk"] = times["avx2"] / times["xk"]
        vexp = [r[k + "_ns"] for k in ("texp", "xexp") if k in times]
        if vexp:  # the same numbers as the row's columns, not recomputed (no second rounding)
            r["vexp_ns"] = min(vexp)
        others = {k: f for k, f in fns.items() if k in PEERS and f is not None}
        if others:
            ptimes = _time_group({"xk": fns["xk"], **others}, repeat, settle=True)
            r["xk with peers_ns"] = ptimes["xk"] * 1e9 / x.size
            for k in others:
                r[f"{k}_ns"] = ptimes[k] * 1e9 / x.size
                r[f"{k}/xk"] = ptimes[k] / ptimes["xk"]
            best = min(others, key=ptimes.get)
            r["best/xk"] = ptimes[best] / ptimes["xk"]
            r["best"] = best
            # 3x the best peer, in ns per element, against the cheapest single exp pass
            r["best/3_ns"] = ptimes[best] * 1e9 / x.size / 3
            if "vexp_ns" in r:
                r["best/3 / vexp"] = r["best/3_ns"] / r["vexp_ns"]
        rows.append(r)

    ran = sorted({k for r in rows for k in PEERS if f"{k}/xk" in r}, key=PEERS.index)
    info = _info(xentkit, torch, threads, repeat,
                 jax=None if jax is None else jax.__version__,
                 optax=None if optax is None else getattr(optax, "__version__", "?"))
    info |= {
        "cpus allowed": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "peers": ran,
    }
    if jax is not None:
        info["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "")
        if clock.wall > 0:
            info["jax cpu/wall"] = round(clock.cpu / clock.wall, 2)
    if quick and "compile" in ran:
        info["compile"] = "first shape only (quick)"
    if skipped:
        info["skipped"] = skipped
    return info, rows


def _machine():
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} logical CPUs, {platform.system()}"


def _fmt(v):
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def format_table(rows, columns):
    head = ["case"] + columns
    body = [[r["case"]] + [_fmt(r[c]) if c in r else "-" for c in columns] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(b.ljust(w) for b, w in zip(row, widths)) + " |" for row in body]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="xentkit bench", description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=7, help="timed runs per case (median; default 7)")
    p.add_argument("--threads", type=int, default=1, help="threads for the main table (default 1)")
    p.add_argument("--quick", action="store_true", help="small shapes only (a smoke test)")
    p.add_argument("--no-thread-scaling", action="store_true",
                   help="skip the one-against-two-threads table")
    p.add_argument("--no-torch", action="store_true",
                   help="skip the xentkit.torch table (forward+backward on CPU tensors)")
    p.add_argument("--no-linear", action="store_true",
                   help="skip the fused linear cross-entropy table (the longest one)")
    p.add_argument("--peers", action="store_true",
                   help="add the peers table: the floor of every call and xentkit against PyTorch"
                   " eager, torch.compile and JAX/XLA, each when installed")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = p.parse_args(argv)
    if args.repeat < 1 or args.threads < 1:
        p.error("--repeat and --threads must be at least 1")
    info, rows = run(args.repeat, args.threads, args.quick)
    scaling = [] if args.no_thread_scaling else run_threads(args.repeat, args.quick)
    torch_rows = [] if args.no_torch else run_torch(args.repeat, args.threads, args.quick)
    linear_rows = [] if args.no_linear else run_linear(args.repeat, args.threads, args.quick)
    peers_info, peer_rows = (run_peers(args.repeat, args.threads, args.quick) if args.peers
                             else ({}, []))
    if args.json:
        out = {"info": info, "rows": rows, "threads": scaling, "torch": torch_rows,
               "linear": linear_rows}
        if args.peers:
            out["peers"] = {"info": peers_info, "rows": peer_rows}
        print(json.dumps(out, indent=1))
        return 0
    print(", ".join(f"{k}: {v}" for k, v in info.items()))
    print("\nns per element (median of %d); ratios within the run\n" % args.repeat)
    main_rows = [r for r in rows if "xk_ns" in r and "f16/f32" not in r]
    print(format_table(main_rows, ["xk_ns", "caffe_ns", "torch_ns", "copy_ns", "torch/xk",
                                   "torch/caffe", "xk/copy", "caffe/copy"]))
    print()
    print(format_table([r for r in rows if "f16/f32" in r], ["xk_ns", "xk32_ns", "f16/f32"]))
    print()
    print(format_table([r for r in rows if "xk_us" in r], ["xk_us", "torch_us", "torch/xk"]))
    print("\nthe ratio targets in ns per element, against one pass over the data (same runs):"
          "\ntorch/8 and torch/6 are 8x and 6x faster than PyTorch; 2copy is twice the copy;"
          "\nexp is np.exp(x, out=...), one float32 exp per logit; tiled is the copy made in the"
          "\nkernels' order, 256 positions of every class at a time\n")
    print(format_table([r for r in rows if "2copy_ns" in r or "exp_ns" in r],
                       ["xk_ns", "torch/8_ns", "2copy_ns", "tiled_ns", "torch/6_ns", "exp_ns"]))
    if torch_rows:
        print("\nxentkit.torch: one training step's loss forward+backward on CPU tensors (xt),"
              "\nagainst F.cross_entropy eager and under torch.compile, and the NumPy call\n")
        print(format_table([r for r in torch_rows if "xt_ns" in r],
                           ["xt_ns", "eager_ns", "compile_ns", "numpy_ns", "eager/xt",
                            "compile/xt", "xt/numpy"]))
        print()
        print(format_table([r for r in torch_rows if "xt_us" in r],
                           ["xt_us", "eager_us", "eager/xt"]))
    if linear_rows:
        print("\nfused linear cross-entropy, float32, forward+backward (ms, median): xentkit (xk)"
              "\nagainst the three matrix products alone (gemm3, np.matmul), scoring (score,"
              "\nreduction='none', no gradient) against one product (gemm1), PyTorch's"
              "\nF.linear_cross_entropy chunked (options=LinearCrossEntropyOptions()) and reference,"
              "\ntorch.compile of the reference, and xentkit.torch (xt); peak: extra resident"
              "\nmemory of one call in a fresh process over the full logits' size\n")
        print(format_table(linear_rows, ["xk_ms", "gemm3_ms", "xk/gemm3", "score_ms", "gemm1_ms",
                                         "score/gemm1", "chunked/xk", "reference/xk",
                                         "compile/xk", "xt/xk", "peak/logits",
                                         "score peak/logits"]))
    if args.peers:
        print("\npeers: float32 loss + gradient (mean), ns per element (median); floor = max(copy,"
              "\nexp) of the logits (BCE: max(1.5 copy, exp)), timed with xk on the same arrays;"
              "\nthe peers timed with xk again (xk with peers: colder caches); eager/xk,"
              "\ncompile/xk, jax/xk: how many times longer each peer takes; best/xk: the fastest;"
              "\nvexp: the fastest of the peers' own exp passes over the logits (torch.exp into"
              "\na buffer, jitted jnp.exp), a bound on any loss + gradient; best/3: a third of"
              "\nthe best peer's time (best/3 / vexp < 1: 3x the best peer is below one exp pass)\n")
        print(", ".join(f"{k}: {v}" for k, v in peers_info.items() if k not in info
                        or peers_info[k] != info[k]))
        print()
        print(format_table(peer_rows, ["xk_ns", "floor_ns", "xk/floor", "xk with peers_ns",
                                       "eager_ns", "compile_ns",
                                       "jax_ns", "eager/xk", "compile/xk", "jax/xk", "best",
                                       "best/xk", "vexp_ns", "best/3_ns", "best/3 / vexp"]
                           + (["avx2/xk"] if any("avx2/xk" in r for r in
                                                                     peer_rows) else [])))
    if scaling:
        print("\none thread against two\n")
        print(format_table(scaling, ["t1_ns", "t2_ns", "speedup", "bit-identical"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
