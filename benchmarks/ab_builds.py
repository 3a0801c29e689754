"""Two or more builds of xentkit timed in one process, call by call.

On a shared machine the same call moves by 10-50% from one run (or minute) to the next, more
than most kernel changes are worth; builds timed in separate runs cannot be compared. This
script imports every build into one process under its own name (xentkit_<label>: the package
imports itself relatively, so a copy under another name loads its own compiled core), then
alternates them call by call, warm (the call repeated) and cold (after writing a buffer larger
than the last-level cache), and checks that they write the same bytes.

    # a build of another commit, beside the current one
    git worktree add /tmp/xk_old <commit>
    pip install --no-deps --no-build-isolation --target /tmp/xk_old_site /tmp/xk_old
    taskset -c 0 python benchmarks/ab_builds.py old=/tmp/xk_old_site new=current \\
        --shapes 8x21x128x128,65536x10,bce:4096x1000 --repeat 40

A build is LABEL=DIR (DIR holds an installed ``xentkit`` package, as ``pip install --target``
leaves it) or LABEL=current (the xentkit this Python imports). Shapes: NxC (rows), NxCxHxW... (class
axis 1), bce:NxC (binary cross entropy with logits). Columns: ns per element, minimum and median
of --repeat calls per build and mode, and each build's minimum over the first build's.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np


def _current_files() -> tuple[str, str]:
    """The package folder and compiled core of the xentkit this Python imports, found in a
    child process (importing it here would let its core and a build's be confused: each
    compiled core registers itself as ``xentkit._core`` when it loads)."""
    code = ("import os, xentkit; from xentkit import _core; "
            "print(os.path.dirname(xentkit.__file__)); print(_core.__file__)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout.split("\n")
    return out[0], out[1]


def _copy_build(label: str, where: str, root: str) -> str:
    """Copy the package of one build into root as xentkit_<label>; returns the module name."""
    name = f"xentkit_{label}"
    dst = os.path.join(root, name)
    if where == "current":
        src, core = _current_files()
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        # An editable install keeps the compiled core apart from the Python sources.
        shutil.copy2(core, dst)
    else:
        src = os.path.join(where, "xentkit")
        if not os.path.isfile(os.path.join(src, "__init__.py")):
            raise SystemExit(f"{label}={where}: expected an installed package at {src}")
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return name


def _import_build(name: str):
    """Import one copied build; the sys.modules entry its core makes under the name
    ``xentkit._core`` is put back as it was."""
    before = sys.modules.get("xentkit._core")
    try:
        mod = importlib.import_module(name)
    finally:
        if before is None:
            sys.modules.pop("xentkit._core", None)
        else:
            sys.modules["xentkit._core"] = before
    core = os.path.realpath(mod._core.__file__)
    if os.path.dirname(core) != os.path.realpath(os.path.dirname(mod.__file__)):
        raise SystemExit(f"{name}: its compiled core came from {core}, not its own folder")
    return mod


def _parse_shape(text: str):
    kind, _, dims = text.rpartition(":")
    if kind not in ("", "bce"):
        raise SystemExit(f"shape {text!r}: expected NxC, NxCxHxW... or bce:NxC")
    try:
        shape = tuple(int(v) for v in dims.split("x"))
    except ValueError:
        raise SystemExit(f"shape {text!r}: expected integers separated by 'x'") from None
    if len(shape) < 2 or min(shape) < 1:
        raise SystemExit(f"shape {text!r}: expected at least two dimensions, each >= 1")
    return kind or "ce", shape


def _calls(mod, kind, x, t, out):
    if kind == "bce":
        return lambda: mod.binary_cross_entropy_with_logits(x, t, grad=out)
    return lambda: mod.cross_entropy(x, t, grad=out)


def run(builds: dict[str, str], shapes: list[str], repeat: int, flush_mb: int, seed: int = 0):
    """Rows of (shape, {label: {"warm": [ns/elem...], "cold": [...]}}, same_bytes)."""
    root = tempfile.mkdtemp(prefix="xk_ab_")
    sys.path.insert(0, root)
    try:
        mods = {label: _import_build(_copy_build(label, where, root))
                for label, where in builds.items()}
    finally:
        sys.path.remove(root)
        # The modules are loaded (the compiled cores mapped); their files are not needed now.
        shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    flush = np.zeros(flush_mb << 20, np.uint8)
    rows = []
    for text in shapes:
        kind, shape = _parse_shape(text)
        x = rng.standard_normal(shape, dtype=np.float32) * 3
        if kind == "bce":
            t = rng.uniform(size=shape).astype(np.float32)
        else:
            t = rng.integers(0, shape[1], size=(shape[0],) + shape[2:])
        out = np.empty_like(x)
        results = {}
        for label, mod in mods.items():
            loss = _calls(mod, kind, x, t, out)()[0]
            results[label] = (np.asarray(loss).tobytes(), out.tobytes())
        first = next(iter(results.values()))
        same = all(r == first for r in results.values())
        times = {label: {"warm": [], "cold": []} for label in mods}
        fns = {label: _calls(mod, kind, x, t, out) for label, mod in mods.items()}
        for _ in range(repeat):
            for label, fn in fns.items():
                fn()
                t0 = time.perf_counter_ns()
                fn()
                times[label]["warm"].append((time.perf_counter_ns() - t0) / x.size)
                flush[::64] += 1
                t0 = time.perf_counter_ns()
                fn()
                times[label]["cold"].append((time.perf_counter_ns() - t0) / x.size)
        rows.append((text, times, same))
    return rows


def format_rows(rows) -> str:
    lines = ["| shape | build | warm min | warm median | cold min | cold median | warm/first "
             "| cold/first | same bytes |", "|---|---|---|---|---|---|---|---|---|"]
    for text, times, same in rows:
        base = next(iter(times.values()))
        for label, tm in times.items():
            w, c = np.array(tm["warm"]), np.array(tm["cold"])
            lines.append(
                f"| {text} | {label} | {w.min():.3f} | {np.median(w):.3f} | {c.min():.3f} | "
                f"{np.median(c):.3f} | {w.min() / min(base['warm']):.3f} | "
                f"{c.min() / min(base['cold']):.3f} | {'yes' if same else 'NO'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("builds", nargs="+", metavar="LABEL=DIR",
                    help="a build: LABEL=DIR (an installed package under DIR) or LABEL=current")
    ap.add_argument("--shapes", default="8x21x128x128,4x150x64x64,65536x10,4096x1000",
                    help="comma-separated: NxC, NxCxHxW..., bce:NxC")
    ap.add_argument("--repeat", type=int, default=30, help="calls per build and mode")
    ap.add_argument("--flush-mb", type=int, default=64,
                    help="MB written before each cold call (more than the last-level cache)")
    args = ap.parse_args(argv)
    builds = {}
    for item in args.builds:
        label, sep, where = item.partition("=")
        if not sep or not label.isidentifier() or not where:
            ap.error(f"build {item!r}: expected LABEL=DIR or LABEL=current (LABEL an identifier)")
        if label in builds:
            ap.error(f"build label {label!r} given twice")
        builds[label] = where
    if args.repeat < 1:
        ap.error(f"--repeat: expected >= 1, got {args.repeat}")
    if args.flush_mb < 1:
        ap.error(f"--flush-mb: expected >= 1, got {args.flush_mb}")
    rows = run(builds, args.shapes.split(","), args.repeat, args.flush_mb)
    print(format_rows(rows))
    return 0 if all(same for _, _, same in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
