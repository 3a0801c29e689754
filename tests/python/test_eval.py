"""`xentkit eval`: losses of .npy files read in blocks of rows equal one in-memory call and the
float64 references, for every loss, option set and block size."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import xentkit
from xentkit.__main__ import main

import ref_binary_tf as rb
import ref_softmax_family as rs
import references as rc


def eager(loss, a, b, **kwargs):
    """One in-memory call: the loss of the whole arrays (the mean of the TF per-row losses)."""
    fn = getattr(xentkit, loss)
    if loss in ("sigmoid_cross_entropy_loss", "softmax_with_loss"):
        return fn(a, b, diff=False, **kwargs)[0]
    if loss.endswith("_with_logits") and loss != "binary_cross_entropy_with_logits":
        return float(np.mean(fn(b, a, **kwargs)))
    return fn(a, b, **kwargs)


def _cases(rng):
    """(id, loss, arrays {argument name: array}, keyword options, float64 reference)."""
    n = 23
    out = []

    s = rng.normal(scale=2.0, size=(n, 3, 4)).astype(np.float32)
    t = rng.uniform(size=(n, 3, 4)).astype(np.float32)
    t[rng.uniform(size=t.shape) < 0.3] = 1.5  # int(1.5) == 1: the ignored label below
    for norm in ("valid", "full", "batch_size", "none"):
        out.append((f"sigmoid-{norm}", "sigmoid_cross_entropy_loss", {"scores": s, "targets": t},
                    {"ignore_label": 1, "normalization": norm},
                    lambda a, b, norm=norm: rc.sigmoid_ref(a, b, ignore_label=1,
                                                           normalization=norm)[0]))
    out.append(("sigmoid-default", "sigmoid_cross_entropy_loss",
                {"scores": s.astype(np.float64), "targets": t.astype(np.float64)}, {},
                lambda a, b: rc.sigmoid_ref(a, b)[0]))

    s = rng.normal(scale=3.0, size=(n, 5, 2, 3))
    lab = rng.integers(0, 5, size=(n, 2, 3)).astype(np.uint8)
    lab[rng.uniform(size=lab.shape) < 0.25] = 255
    for norm in ("VALID", "full", "batch_size", "none"):
        out.append((f"softmax-{norm}", "softmax_with_loss", {"scores": s, "labels": lab},
                    {"ignore_label": 255, "normalization": norm},
                    lambda a, b, norm=norm: rc.softmax_ref(a, b, ignore_label=255,
                                                           normalization=norm)[0]))
    flat = lab.reshape(-1).astype(np.float32)  # float labels in another shape, axis 2 of (N,2,5,3)
    s2 = np.ascontiguousarray(np.moveaxis(s, 1, 2))
    out.append(("softmax-axis2-flatlabels-normalize", "softmax_with_loss",
                {"scores": s2, "labels": flat},
                {"axis": 2, "ignore_label": 255, "normalize": False},
                lambda a, b: rc.softmax_ref(a, b, axis=2, ignore_label=255, normalize=False)[0]))

    p = rng.uniform(0.02, 0.98, size=(n, 6))
    q = rng.uniform(size=(n, 6))
    w_row = rng.uniform(0.5, 2.0, size=(n, 6))
    for red in ("mean", "sum"):
        out.append((f"bce-{red}", "binary_cross_entropy", {"input": p, "target": q},
                    {"reduction": red},
                    lambda a, b, red=red: rb.bce_ref(a, b, reduction=red)[0]))
    out.append(("bce-rowweight", "binary_cross_entropy", {"input": p, "target": q},
                {"weight": w_row}, lambda a, b: rb.bce_ref(a, b, w_row)[0]))
    x = rng.normal(scale=2.0, size=(n, 4, 3)).astype(np.float32)
    tq = rng.uniform(size=(n, 4, 3)).astype(np.float32)
    pw = rng.uniform(0.5, 3.0, size=(4, 1)).astype(np.float32)
    wc = rng.uniform(0.5, 2.0, size=(3,)).astype(np.float32)
    out.append(("bcelogits-weights", "binary_cross_entropy_with_logits",
                {"input": x, "target": tq}, {"pos_weight": pw, "weight": wc},
                lambda a, b: rb.bce_logits_ref(a, b, wc, pos_weight=pw)[0]))

    xh = rng.normal(scale=300.0, size=(n, 40)).astype(np.float16)  # block sums beyond 65504
    th = rng.uniform(size=(n, 40)).astype(np.float16)
    out.append(("bcelogits-float16", "binary_cross_entropy_with_logits",
                {"input": xh, "target": th}, {}, lambda a, b: rb.bce_logits_ref(a, b)[0]))

    x = rng.normal(scale=2.0, size=(n, 5, 3))
    y = rng.integers(0, 5, size=(n, 3)).astype(np.int16)
    y[rng.uniform(size=y.shape) < 0.2] = -100
    wcls = rng.uniform(0.2, 2.0, size=5)
    for red in ("mean", "sum"):
        out.append((f"ce-{red}", "cross_entropy", {"input": x, "target": y},
                    {"reduction": red, "weight": wcls, "label_smoothing": 0.2},
                    lambda a, b, red=red: rs.cross_entropy(a, b, wcls, reduction=red,
                                                           label_smoothing=0.2)[0]))
    y2 = np.where(y == -100, 2, y).astype(np.int64)
    out.append(("ce-ignore-real-class", "cross_entropy", {"input": x, "target": y2},
                {"ignore_index": 2}, lambda a, b: rs.cross_entropy(a, b, ignore_index=2)[0]))
    qp = rng.dirichlet(np.ones(5), size=(n, 3)).transpose(0, 2, 1).copy()
    out.append(("ce-probabilities", "cross_entropy", {"input": x, "target": qp},
                {"label_smoothing": 0.1, "weight": wcls},
                lambda a, b: rs.cross_entropy(a, b, wcls, label_smoothing=0.1)[0]))
    logp = rs.log_softmax(x, dim=1)
    out.append(("nll", "nll_loss", {"input": logp, "target": y}, {"weight": wcls},
                lambda a, b: rs.nll_loss(a, b, wcls)[0]))

    z = rng.uniform(size=(n, 7))
    xl = rng.normal(scale=2.0, size=(n, 7))
    out.append(("tf-sigmoid", "sigmoid_cross_entropy_with_logits", {"logits": xl, "labels": z},
                {}, lambda a, b: rb.sigmoid_tf_ref(b, a)[0].mean()))
    zs = rng.uniform(size=(n, 7, 2))
    xs = rng.normal(size=(n, 7, 2))
    out.append(("tf-softmax-axis1", "softmax_cross_entropy_with_logits",
                {"logits": xs, "labels": zs}, {"axis": 1},
                lambda a, b: rb.softmax_tf_ref(b, a, axis=1)[0].mean()))
    ys = rng.integers(0, 7, size=(n,)).astype(np.uint32)
    out.append(("tf-sparse", "sparse_softmax_cross_entropy_with_logits",
                {"logits": xl.astype(np.float32), "labels": ys}, {},
                lambda a, b: rb.sparse_tf_ref(b, a)[0].mean()))
    return out


CASES = _cases(np.random.default_rng(20240611))
FLAG = {"scores": "--scores", "targets": "--targets", "labels": "--labels",
        "input": "--input", "target": "--target", "logits": "--logits"}


def _write(tmp_path, arrays, options):
    """Saves the arrays (and array-valued options) as .npy files; returns the CLI arguments
    (options: keyword arguments, or a list of flags)."""
    args = []
    for name, arr in arrays.items():
        path = tmp_path / f"{name}.npy"
        np.save(path, arr)
        args += [FLAG[name], str(path)]
    if isinstance(options, dict):
        flags = []
        for key, value in options.items():
            flags += ["--" + key.replace("_", "-"),
                      str(value).lower() if isinstance(value, bool) else value]
        options = flags
    for k, opt in enumerate(options):
        if isinstance(opt, np.ndarray):
            path = tmp_path / f"option{k}.npy"
            np.save(path, opt)
            opt = str(path)
        args.append(str(opt))
    return args


def _run(capsys, argv):
    rc_ = main(argv)
    captured = capsys.readouterr()
    return rc_, captured.out, captured.err


def _tol(dtype):
    return {np.float16: 1e-3, np.float32: 2e-6}.get(np.dtype(dtype).type, 1e-12)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("chunk", ["1", "5", "auto", "1000"])
def test_eval_equals_one_call(tmp_path, capsys, case, chunk):
    _, loss, arrays, options, reference = case
    argv = ["eval", "--loss", loss] + _write(tmp_path, arrays, options)
    if chunk != "auto":
        argv += ["--chunk-rows", chunk]
    code, out, err = _run(capsys, argv)
    assert code == 0, err
    assert err == ""  # no progress bar when stderr is not a terminal
    result = json.loads(out)
    a, b = arrays.values()
    whole = float(eager(loss, a, b, **options))
    ref = float(reference(a, b))
    dt = np.result_type(*[v for v in arrays.values() if v.dtype.kind == "f"])
    assert result["loss_name"] == loss
    assert result["rows"] == a.shape[0]
    assert result["elements"] == a.size
    expected_chunks = {"1": a.shape[0], "5": math.ceil(a.shape[0] / 5), "auto": 1, "1000": 1}
    assert result["chunks"] == expected_chunks[chunk]
    assert result["loss"] == pytest.approx(whole, rel=_tol(dt), abs=1e-30)
    assert result["loss"] == pytest.approx(ref, rel=10 * _tol(dt))


def test_eval_reports_counts(tmp_path, capsys):
    rng = np.random.default_rng(1)
    s = rng.normal(size=(10, 4))
    lab = rng.integers(0, 4, size=10)
    lab[[2, 5, 7]] = -1
    argv = ["eval", "--loss", "softmax_with_loss", "--chunk-rows", "3", "--ignore-label", "-1"]
    argv += _write(tmp_path, {"scores": s, "labels": lab}, [])
    code, out, _ = _run(capsys, argv)
    result = json.loads(out)
    assert code == 0
    assert (result["valid"], result["divisor"], result["positions"]) == (7, 7.0, 10)
    assert result["normalization"] == "valid" and result["dtype"] == "float64"

    y = rng.integers(0, 4, size=10)
    y[0] = -100
    w = rng.uniform(size=4)
    argv = ["eval", "--loss", "nll_loss", "--chunk-rows", "4"]
    argv += _write(tmp_path, {"input": s, "target": y}, ["--weight", w])
    code, out, _ = _run(capsys, argv)
    result = json.loads(out)
    assert result["divisor"] == pytest.approx(w[y[1:]].sum(), rel=1e-14)
    assert result["reduction"] == "mean"


def test_eval_all_ignored(tmp_path, capsys):
    rng = np.random.default_rng(2)
    s = rng.normal(size=(9, 3, 2)).astype(np.float32)
    lab = np.full((9, 2), 255, dtype=np.int32)
    argv = ["eval", "--loss", "softmax_with_loss", "--ignore-label", "255", "--chunk-rows", "2"]
    code, out, _ = _run(capsys, argv + _write(tmp_path, {"scores": s, "labels": lab}, []))
    assert code == 0
    result = json.loads(out)
    assert result["loss"] == 0.0 and result["valid"] == 0 and result["divisor"] == 1.0

    # PyTorch's mean over no target is NaN (printed as NaN, read back by json).
    y = np.full((9, 2), -100, dtype=np.int64)
    argv = ["eval", "--loss", "cross_entropy", "--chunk-rows", "4"]
    code, out, _ = _run(capsys, argv + _write(tmp_path, {"input": s, "target": y}, []))
    assert code == 0
    assert math.isnan(json.loads(out)["loss"])
    assert math.isnan(xentkit.cross_entropy(s, y))
    argv = ["eval", "--loss", "cross_entropy", "--chunk-rows", "4", "--reduction", "sum"]
    code, out, _ = _run(capsys, argv + _write(tmp_path, {"input": s, "target": y}, []))
    assert json.loads(out)["loss"] == 0.0


def test_eval_nan_propagates(tmp_path, capsys):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(12, 4))
    x[10, 1] = np.nan  # in the last block only
    t = rng.uniform(size=(12, 4))
    for loss, arrays in (("binary_cross_entropy_with_logits", {"input": x, "target": t}),
                         ("sigmoid_cross_entropy_loss", {"scores": x, "targets": t}),
                         ("softmax_cross_entropy_with_logits", {"logits": x, "labels": t})):
        argv = ["eval", "--loss", loss, "--chunk-rows", "5"] + _write(tmp_path, arrays, [])
        code, out, err = _run(capsys, argv)
        assert code == 0, err
        assert math.isnan(json.loads(out)["loss"]), loss


def test_eval_zero_rows(tmp_path, capsys):
    x = np.zeros((0, 3))
    t = np.zeros((0, 3))
    argv = ["eval", "--loss", "sigmoid_cross_entropy_loss"]
    code, out, _ = _run(capsys, argv + _write(tmp_path, {"scores": x, "targets": t}, []))
    assert code == 0 and json.loads(out)["loss"] == 0.0
    argv = ["eval", "--loss", "binary_cross_entropy_with_logits"]
    code, out, _ = _run(capsys, argv + _write(tmp_path, {"input": x, "target": t}, []))
    assert code == 0
    assert math.isnan(json.loads(out)["loss"])
    assert math.isnan(xentkit.binary_cross_entropy_with_logits(x, t))


def test_eval_class_axis_zero_is_one_block(tmp_path, capsys):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(6,))
    y = np.array(4)
    argv = ["eval", "--loss", "cross_entropy", "--chunk-rows", "1"]
    code, out, _ = _run(capsys, argv + _write(tmp_path, {"input": x, "target": y}, []))
    result = json.loads(out)
    assert code == 0 and result["chunks"] == 1
    assert result["loss"] == pytest.approx(rs.cross_entropy(x, y)[0], rel=1e-12)
    s = rng.normal(size=(4, 3))
    lab = rng.integers(0, 4, size=3)
    argv = ["eval", "--loss", "softmax_with_loss", "--axis", "0", "--chunk-rows", "1"]
    code, out, _ = _run(capsys, argv + _write(tmp_path, {"scores": s, "labels": lab}, []))
    result = json.loads(out)
    assert code == 0 and result["chunks"] == 1
    assert result["loss"] == pytest.approx(rc.softmax_ref(s, lab, axis=0)[0], rel=1e-12)


def test_eval_chunk_budget(tmp_path, capsys):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1000, 64))  # 512 KiB per array
    y = rng.integers(0, 64, size=1000)
    argv = ["eval", "--loss", "cross_entropy", "--chunk-mb", "0.25"]
    code, out, _ = _run(capsys, argv + _write(tmp_path, {"input": x, "target": y}, []))
    result = json.loads(out)
    assert code == 0
    row_bytes = 64 * 8 + 8
    assert result["chunk_rows"] == (1 << 18) // (3 * row_bytes)
    assert result["chunks"] == math.ceil(1000 / result["chunk_rows"])
    assert result["loss"] == pytest.approx(xentkit.cross_entropy(x, y), rel=1e-12)


def test_eval_memory_stays_bounded(tmp_path):
    """A file of 64 MiB read in 1 MiB blocks: the Python allocations stay near the block size."""
    import tracemalloc

    from xentkit._eval import evaluate

    rows, cols = 1 << 15, 256
    path = tmp_path / "x.npy"
    x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(rows, cols))
    rng = np.random.default_rng(6)
    for i in range(0, rows, 4096):
        x[i:i + 4096] = rng.normal(size=(min(4096, rows - i), cols))
    x.flush()
    del x
    tpath = tmp_path / "t.npy"
    np.save(tpath, rng.uniform(size=(rows, 1)) < 0.5)
    a = np.load(path, mmap_mode="r")
    t = np.load(tpath, mmap_mode="r")
    tracemalloc.start()
    result = evaluate("sigmoid_cross_entropy_loss", a, np.broadcast_to(t, a.shape),
                      {}, chunk_bytes=1 << 20)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result["chunks"] > 100
    assert peak < 8 << 20, f"peak Python allocation {peak} bytes for a {a.nbytes}-byte file"
    whole = np.asarray(a)
    tt = np.ascontiguousarray(np.broadcast_to(np.asarray(t), a.shape))
    assert result["loss"] == pytest.approx(
        xentkit.sigmoid_cross_entropy_loss(whole, tt, diff=False)[0], rel=1e-12)


@pytest.mark.parametrize("argv_tail, message", [
    (["--loss", "softmax_with_loss", "--scores", "MISSING.npy", "--labels", "L.npy"],
     "no such file"),
    (["--loss", "softmax_with_loss", "--scores", "S.npy", "--labels", "BAD.npy"],
     "labels: expected 24 values"),
    (["--loss", "softmax_with_loss", "--scores", "S.npy", "--labels", "L.npy",
      "--normalization", "mean"], "normalization: expected one of"),
    (["--loss", "softmax_with_loss", "--scores", "S.npy", "--labels", "OUT.npy"],
     "labels: expected class indices in [0, 3), got 3 at flat index 2 (in the block of rows "
     "[3, 4)"),
    (["--loss", "softmax_with_loss", "--scores", "S.npy", "--target", "L.npy"],
     "--target: not an argument of softmax_with_loss"),
    (["--loss", "softmax_with_loss", "--scores", "S.npy"], "--labels: required"),
    (["--loss", "cross_entropy", "--input", "S.npy", "--target", "L.npy",
      "--label-smoothing", "1.5"], "label_smoothing"),
    (["--loss", "cross_entropy", "--input", "S.npy", "--target", "L.npy",
      "--ignore-label", "3"], "ignore_label: not an option of cross_entropy"),
    (["--loss", "nll_loss", "--input", "S.npy", "--target", "L.npy", "--pos-weight", "L.npy"],
     "--pos-weight: not an option of nll_loss"),
    (["--loss", "binary_cross_entropy", "--input", "S.npy", "--target", "S.npy"],
     "input: expected every element in [0, 1]"),
    (["--loss", "cross_entropy", "--input", "S.npy", "--target", "L.npy", "--chunk-rows", "0"],
     "--chunk-rows: expected a positive integer"),
    (["--loss", "cross_entropy", "--input", "S.npy", "--target", "TEXT.npy"],
     "cannot read"),
    (["--loss", "sigmoid_cross_entropy_loss", "--scores", "S.npy", "--targets", "L.npy"],
     "targets: expected the same number of elements and the same first dimension as scores "
     "(4, 3, 6), got shape (4, 6)"),
    (["--loss", "binary_cross_entropy_with_logits", "--input", "S.npy", "--target", "P.npy"],
     "target: expected the input's shape (0, 3, 6), got (0, 6) (no broadcasting) (checked on 0 "
     "rows of input (4, 3, 6) float64 and target (4, 6) float64)"),
    (["--loss", "binary_cross_entropy_with_logits", "--input", "S.npy", "--target", "L.npy"],
     "target: expected a floating dtype"),
    (["--loss", "cross_entropy", "--input", "S.npy", "--target", "S.npy", "--chunk-rows", "1",
      "--weight", "L.npy"], "weight: expected a 1-D array of 3 class weights, got shape (4, 6)"),
    (["--loss", "cross_entropy", "--input", "S.npy", "--target", "BAD.npy"],
     "target: expected a first dimension of 4 (that of input (4, 3, 6)), got shape (5, 6)"),
])
def test_eval_errors(tmp_path, capsys, monkeypatch, argv_tail, message):
    rng = np.random.default_rng(7)
    monkeypatch.chdir(tmp_path)
    np.save("S.npy", rng.normal(scale=3.0, size=(4, 3, 6)))
    np.save("L.npy", rng.integers(0, 3, size=(4, 6)))
    np.save("P.npy", rng.uniform(size=(4, 6)))
    np.save("BAD.npy", np.zeros((5, 6), dtype=np.int64))
    out_of_range = rng.integers(0, 3, size=(4, 6))
    out_of_range[3, 2] = 3
    np.save("OUT.npy", out_of_range)
    (tmp_path / "TEXT.npy").write_text("not an array")
    tail = [] if "--chunk-rows" in argv_tail else ["--chunk-rows", "1"]
    code, out, err = _run(capsys, ["eval"] + argv_tail + tail)
    assert code == 2
    assert out == ""
    assert message in err, err
    assert "Traceback" not in err


def test_eval_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["eval", "--loss", "no_such_loss", "--scores", "x.npy"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["eval", "--scores", "x.npy"])
    assert info.value.code == 2
    assert "--loss" in capsys.readouterr().err


def test_eval_subprocess(tmp_path):
    """The installed command: JSON on stdout, nothing on a non-terminal stderr; errors exit 2."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(17, 5)).astype(np.float32)
    y = rng.integers(0, 5, size=17).astype(np.int64)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    cmd = [sys.executable, "-m", "xentkit", "eval", "--loss", "cross_entropy",
           "--input", str(tmp_path / "x.npy"), "--target", str(tmp_path / "y.npy"),
           "--chunk-rows", "4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    result = json.loads(proc.stdout)
    assert result["loss"] == pytest.approx(xentkit.cross_entropy(x, y), rel=2e-6)
    assert result["loss"] == pytest.approx(rs.cross_entropy(x, y)[0], rel=1e-5)
    assert result["dtype"] == "float32" and result["chunks"] == 5
    proc = subprocess.run(cmd[:-4] + ["--target", str(tmp_path / "nope.npy")],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert "no such file" in proc.stderr and "Traceback" not in proc.stderr


def test_eval_progress_forced(tmp_path, capsys):
    rng = np.random.default_rng(9)
    x = rng.normal(size=(8, 3))
    t = rng.uniform(size=(8, 3))
    argv = ["eval", "--loss", "sigmoid_cross_entropy_with_logits", "--progress",
            "--chunk-rows", "2"]
    code, out, err = _run(capsys, argv + _write(tmp_path, {"logits": x, "labels": t}, []))
    assert code == 0
    assert json.loads(out)["count"] == 24
    assert err != ""  # a progress display was drawn on stderr


def test_eval_progress_without_tqdm(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now raises ImportError
    rng = np.random.default_rng(10)
    x = rng.normal(size=(8, 3))
    t = rng.uniform(size=(8, 3))
    argv = ["eval", "--loss", "binary_cross_entropy_with_logits", "--progress",
            "--chunk-rows", "3"]
    code, out, err = _run(capsys, argv + _write(tmp_path, {"input": x, "target": t}, []))
    assert code == 0
    assert json.loads(out)["loss"] == pytest.approx(rb.bce_logits_ref(x, t)[0], rel=1e-12)
    assert "8/8 rows (100.0%)" in err


def test_cmake_dir(capsys):
    code = main(["--cmake-dir"])
    out = capsys.readouterr().out.strip()
    assert code == 0
    assert out == xentkit.cmake_dir()
    assert os.path.isfile(os.path.join(out, "xentkitConfig.cmake"))
    assert os.path.isfile(os.path.join(out, "xentkitConfigVersion.cmake"))
    root = os.path.dirname(out)
    assert os.path.isfile(os.path.join(root, "include", "xentkit", "xentkit.hpp"))
    assert os.path.isfile(os.path.join(root, "include", "xentkit", "version.hpp"))
    assert os.path.isfile(os.path.join(root, "lib", "libxentkit.a"))
    with open(os.path.join(root, "include", "xentkit", "version.hpp")) as f:
        assert f'XENTKIT_VERSION_STRING "{xentkit.__version__}"' in f.read()
