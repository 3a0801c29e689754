"""``xentkit eval``: the loss of predictions stored in .npy files, as JSON.

The files are memory-mapped (``np.load(mmap_mode="r")``) and read in blocks of rows (axis 0), so
the memory used is bounded by the block size, not by the files. Each block gives partial sums
(:mod:`xentkit._partial`); the loss is divided once at the end, so it equals one call of the
library on the whole arrays (to the rounding of the summation order).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Dict, Optional

import numpy as np

from ._partial import LOSSES, block_partial, check_block_shapes, cut, finish, make_plan

DEFAULT_CHUNK_MB = 64

_ARRAY_FLAGS = {
    "scores": "--scores", "targets": "--targets", "labels": "--labels", "input": "--input",
    "target": "--target", "logits": "--logits",
}

_EPILOG = """\
array arguments per loss (the names of the Python functions' arguments):
  sigmoid_cross_entropy_loss               --scores S.npy --targets T.npy
  softmax_with_loss                        --scores S.npy --labels L.npy
  binary_cross_entropy[_with_logits]       --input X.npy --target T.npy
  cross_entropy, nll_loss                  --input X.npy --target T.npy (indices or probabilities)
  sigmoid_/softmax_/sparse_softmax_cross_entropy_with_logits   --logits X.npy --labels L.npy

options: Caffe layers --ignore-label, --normalization (default: Caffe's), --normalize,
  --axis (softmax_with_loss); PyTorch functions --reduction mean|sum, --weight W.npy,
  --pos-weight P.npy, --ignore-index, --label-smoothing; TensorFlow functions --axis
  (softmax_cross_entropy_with_logits). The TensorFlow functions give one loss per row or
  element: eval reports their mean as "loss" (and their "sum").

The arrays are read in blocks of rows along axis 0 (--chunk-rows, or as many rows as fit in
--chunk-mb megabytes of input, default %d). When axis 0 is the class axis (1-D inputs of the
class-index losses, an explicit class axis 0) the arrays are read in one block. The progress
bar (stderr) uses tqdm when it is installed. The result is one JSON object on stdout: "loss"
(NaN prints as NaN), "loss_name", "dtype", "rows", "elements", "divisor" and the counts of
the loss. Errors: a message on stderr, exit status 2.
""" % DEFAULT_CHUNK_MB


class EvalError(ValueError):
    """A user error: reported on stderr with exit status 2."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``eval`` subcommand to the CLI's subparsers."""
    p = subparsers.add_parser(
        "eval", help="the loss of predictions stored in .npy files (memory-mapped, in blocks)",
        description="The loss of predictions stored in .npy files, computed in blocks of rows "
                    "from memory-mapped files, printed as JSON.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loss", required=True, choices=sorted(LOSSES), metavar="NAME",
                   help="one of: " + ", ".join(LOSSES))
    for name, flag in _ARRAY_FLAGS.items():
        p.add_argument(flag, dest=name, metavar="FILE.npy", help=f"the {name} array")
    p.add_argument("--weight", metavar="FILE.npy", help="PyTorch weight (class or element)")
    p.add_argument("--pos-weight", dest="pos_weight", metavar="FILE.npy",
                   help="pos_weight of binary_cross_entropy_with_logits")
    p.add_argument("--ignore-label", dest="ignore_label", type=int, metavar="INT",
                   help="Caffe layers: the ignored label")
    p.add_argument("--normalization", metavar="MODE",
                   help="Caffe layers: full | valid | batch_size | none (any case)")
    p.add_argument("--normalize", choices=("true", "false"),
                   help="Caffe's deprecated flag (used when --normalization is absent)")
    p.add_argument("--axis", type=int, metavar="INT",
                   help="class axis of softmax_with_loss (default 1) and "
                        "softmax_cross_entropy_with_logits (default -1)")
    p.add_argument("--reduction", choices=("mean", "sum"),
                   help="PyTorch functions: mean (default) or sum")
    p.add_argument("--ignore-index", dest="ignore_index", type=int, metavar="INT",
                   help="cross_entropy, nll_loss: the ignored class index (default -100)")
    p.add_argument("--label-smoothing", dest="label_smoothing", type=float, metavar="EPS",
                   help="cross_entropy: label smoothing in [0, 1]")
    p.add_argument("--chunk-rows", dest="chunk_rows", type=int, metavar="N",
                   help="rows per block (default: from --chunk-mb)")
    p.add_argument("--chunk-mb", dest="chunk_mb", type=float, default=DEFAULT_CHUNK_MB,
                   metavar="MB", help=f"input megabytes per block (default {DEFAULT_CHUNK_MB})")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    return p


def _load(path: str, what: str) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise EvalError(f"{what}: no such file: {path!r}") from None
    except (OSError, ValueError) as e:
        raise EvalError(f"{what}: cannot read {path!r} as a .npy array ({e})") from None
    if not isinstance(arr, np.ndarray):
        raise EvalError(f"{what}: expected a .npy file holding one array, got {path!r} "
                        f"({type(arr).__name__})")
    return arr


def _progress(enabled: Optional[bool], total: int):
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return _NoProgress()
    try:
        from tqdm import tqdm
    except ImportError:
        return _TextProgress(total)
    return tqdm(total=total, unit="rows", file=sys.stderr, leave=False, dynamic_ncols=True)


class _NoProgress:
    def update(self, n):
        pass

    def close(self):
        pass


class _TextProgress:
    """The progress line used when tqdm is not installed."""

    def __init__(self, total):
        self.total, self.done = total, 0

    def update(self, n):
        self.done += n
        pct = 100.0 * self.done / self.total if self.total else 100.0
        sys.stderr.write(f"\rxentkit eval: {self.done}/{self.total} rows ({pct:5.1f}%)")
        sys.stderr.flush()

    def close(self):
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()


def evaluate(loss: str, a: np.ndarray, b: np.ndarray, options: Dict[str, Any],
             weights: Optional[Dict[str, np.ndarray]] = None, chunk_rows: Optional[int] = None,
             chunk_bytes: int = DEFAULT_CHUNK_MB << 20, progress: Optional[bool] = False
             ) -> Dict[str, Any]:
    """The loss `loss` of arrays `a` (scores/input/logits) and `b` (targets/labels), read in
    blocks of `chunk_rows` rows (default: as many as fit in `chunk_bytes` of input). Returns
    the JSON fields of ``xentkit eval``."""
    weights = {k: v for k, v in (weights or {}).items() if v is not None}
    plan = make_plan(loss, a.shape, a.dtype, b.shape, b.dtype, options,
                     {k: v.shape for k, v in weights.items()})
    check_block_shapes(plan, a.shape, a.dtype, b.shape, b.dtype, weights)
    rows = plan.rows
    if not plan.splittable:
        step = max(rows, 1)
    elif chunk_rows is not None:
        if chunk_rows < 1:
            raise EvalError(f"--chunk-rows: expected a positive integer, got {chunk_rows}")
        step = chunk_rows
    else:
        row_bytes = (a.nbytes + b.nbytes) / max(rows, 1)
        row_bytes += sum(w.nbytes / max(rows, 1) for k, w in weights.items()
                         if k in plan.row_weights)
        # The kernels may convert a block to the compute dtype and the losses need room too.
        step = max(1, int(chunk_bytes // max(3 * row_bytes, 1)))
    step = min(step, max(rows, 1))
    totals = np.zeros(4, dtype=np.float64)
    starts = range(0, rows, step) if plan.splittable else range(0, 1)
    bar = _progress(progress, rows)
    chunks = 0
    try:
        for start in starts:
            stop = min(start + step, rows)
            blk = {k: cut(plan, k, w, start, stop) for k, w in weights.items()}
            try:
                totals += block_partial(plan, cut(plan, "a", a, start, stop),
                                        cut(plan, "b", b, start, stop), blk)
            except (ValueError, TypeError) as e:
                if not plan.splittable or (start == 0 and stop == rows):
                    raise
                raise EvalError(f"{e} (in the block of rows [{start}, {stop}); its flat "
                                f"indices count from row {start})") from e
            chunks += 1
            bar.update(stop - start if plan.splittable else rows)
    finally:
        bar.close()
    result = finish(plan, totals)
    value = result.pop("value")
    name = result.pop("loss")
    return {"loss": value, "loss_name": name, "rows": rows, "elements": int(a.size),
            "chunks": chunks, "chunk_rows": step, **result}


def run(args: argparse.Namespace) -> int:
    """Runs ``xentkit eval`` with parsed arguments: JSON on stdout, 0; or a message, 2."""
    from ._errors import LabelError

    try:
        info = LOSSES[args.loss]
        a_name, b_name = info.arrays
        for name, flag in _ARRAY_FLAGS.items():
            if getattr(args, name) is not None and name not in info.arrays:
                raise EvalError(f"{flag}: not an argument of {args.loss} (it takes "
                                f"{_ARRAY_FLAGS[a_name]} and {_ARRAY_FLAGS[b_name]})")
        for name in info.arrays:
            if getattr(args, name) is None:
                raise EvalError(f"{_ARRAY_FLAGS[name]}: required by {args.loss}")
        options = {}
        for opt in ("ignore_label", "normalization", "axis", "reduction", "ignore_index",
                    "label_smoothing"):
            if getattr(args, opt) is not None:
                options[opt] = getattr(args, opt)
        if args.normalize is not None:
            options["normalize"] = args.normalize == "true"
        weights = {}
        for opt, flag in (("weight", "--weight"), ("pos_weight", "--pos-weight")):
            if getattr(args, opt) is not None:
                if opt not in info.options:
                    raise EvalError(f"{flag}: not an option of {args.loss}")
                weights[opt] = _load(getattr(args, opt), opt)
        if args.chunk_mb is not None and not (args.chunk_mb > 0 and math.isfinite(args.chunk_mb)):
            raise EvalError(f"--chunk-mb: expected a positive number, got {args.chunk_mb}")
        a = _load(getattr(args, a_name), a_name)
        b = _load(getattr(args, b_name), b_name)
        result = evaluate(args.loss, a, b, options, weights, chunk_rows=args.chunk_rows,
                          chunk_bytes=int(args.chunk_mb * (1 << 20)), progress=args.progress)
    except (EvalError, ValueError, TypeError, LabelError, OverflowError, MemoryError) as e:
        print(f"xentkit eval: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0
