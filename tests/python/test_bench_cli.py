"""The benchmark command runs end to end and reports what it promises (no timing is asserted)."""

from __future__ import annotations

import json
import math

import xentkit
from xentkit import _bench
from xentkit.__main__ import main


def test_bench_quick_json(capsys, restore_threads):
    before = xentkit.get_num_threads()
    assert main(["bench", "--quick", "--repeat", "1", "--json", "--no-torch"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["info"]["simd"] == xentkit.simd_level()
    assert out["info"]["threads"] == 1 and out["info"]["repeat"] == 1
    cases = [r["case"] for r in out["rows"]]
    assert any(c.startswith("softmax loss+grad") for c in cases)
    assert any(c.startswith("softmax loss only") for c in cases)
    assert any(c.startswith("sigmoid loss+grad") for c in cases)
    assert any(c.startswith("float16") for c in cases)
    assert any(c.startswith("tiny call") for c in cases)
    for row in out["rows"]:
        for key, value in row.items():
            if key.endswith("_ns") or key.endswith("_us") or "/" in key:
                assert isinstance(value, float) and value > 0 and math.isfinite(value), (row, key)
    assert out["threads"] and all(r["bit-identical"] for r in out["threads"])
    assert xentkit.get_num_threads() == before  # the thread table puts the count back


def test_bench_table_and_errors(capsys):
    assert main(["bench", "--quick", "--repeat", "1", "--no-thread-scaling", "--no-torch"]) == 0
    text = capsys.readouterr().out
    assert "| case" in text and "softmax loss+grad 256x1000" in text and "tiny call" in text
    assert "one thread against two" not in text
    try:
        main(["bench", "--repeat", "0"])
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("--repeat 0 was accepted")


def test_format_table_aligns_columns():
    rows = [{"case": "a", "x_ns": 1.23456, "ok": True}, {"case": "longer case", "x_ns": 123.0}]
    lines = _bench.format_table(rows, ["x_ns", "ok"]).splitlines()
    assert len({len(line) for line in lines}) == 1
    assert "1.23" in lines[2] and "123" in lines[3] and "yes" in lines[2] and "-" in lines[3]


def test_bench_torch_table(capsys, restore_threads):
    import pytest

    pytest.importorskip("torch")
    rows = _bench.run_torch(repeat=1, quick=True)
    cases = [r["case"] for r in rows]
    assert cases == ["torch fwd+bwd 256x1000", "torch fwd+bwd 1x10 (us per step)"]
    for row in rows:
        for key, value in row.items():
            if key.endswith("_ns") or key.endswith("_us") or "/" in key:
                assert isinstance(value, float) and value > 0 and math.isfinite(value), (row, key)


def test_bench_linear_table(restore_threads):
    rows = _bench.run_linear(repeat=1, quick=True, memory=True)
    assert [r["case"] for r in rows] == ["linear CE 256x64x4000"]
    row = rows[0]
    for key in ("xk/gemm3", "score/gemm1"):
        assert isinstance(row[key], float) and math.isfinite(row[key]) and row[key] > 0, key
    for key in ("peak/logits", "score peak/logits"):  # scoring may need no new pages at all
        assert isinstance(row[key], float) and math.isfinite(row[key]) and row[key] >= 0, key
    assert row["peak/logits"] < 1.0  # never the whole logits
