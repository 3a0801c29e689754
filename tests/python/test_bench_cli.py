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


def test_bench_peers_table(capsys, restore_threads, monkeypatch):
    """The peers table has the floor and a ratio for every peer that is installed; a peer that is
    absent is named in info["skipped"], never a failure. torch.compile is left out here (its
    warm-up takes seconds); test_bench_peers_compile times it."""
    monkeypatch.setattr(_bench, "_torch_steps", lambda torch: (_ for _ in ()).throw(
        RuntimeError("compile left out of this test")))
    info, rows = _bench.run_peers(repeat=1, quick=True)
    assert [r["case"] for r in rows] == ["CE loss+grad 256x1000", "CE loss+grad 2048x10",
                                         "CE loss+grad 2x21x16x16", "BCE loss+grad 256x1000"]
    assert info["threads"] == 1 and info["simd"] == xentkit.simd_level()
    assert "compile" in info["skipped"] and "compile" not in info["peers"]
    for peer in ("eager", "jax"):
        assert (peer in info["peers"]) != (peer in info.get("skipped", {})), peer
    for row in rows:
        assert row["floor_ns"] == max(row["copy_ns"] * (1.5 if "BCE" in row["case"] else 1.0),
                                      row["exp_ns"])
        assert math.isclose(row["xk/floor"], row["xk_ns"] / row["floor_ns"])
        for peer in info["peers"]:
            assert row[f"{peer}/xk"] > 0 and math.isclose(
                row[f"{peer}/xk"], row[f"{peer}_ns"] / row["xk with peers_ns"])
        if info["peers"]:
            assert row["best"] in info["peers"]
            assert row["best/xk"] == min(row[f"{p}/xk"] for p in info["peers"])
            assert math.isclose(row["best/3_ns"], row[f"{row['best']}_ns"] / 3)
        # the peers' exp passes (torch.exp, jitted jnp.exp), the fastest of them the bound
        passes = [row[k] for k in ("texp_ns", "xexp_ns") if k in row]
        assert len(passes) == ("eager" in info["peers"]) + ("jax" in info["peers"])
        if passes:
            assert row["vexp_ns"] == min(passes) > 0
            assert math.isclose(row["best/3 / vexp"], row["best/3_ns"] / row["vexp_ns"])
    assert main(["bench", "--quick", "--repeat", "1", "--no-thread-scaling", "--no-torch",
                 "--no-linear", "--peers"]) == 0
    text = capsys.readouterr().out
    assert "xk/floor" in text and "BCE loss+grad 256x1000" in text and "best/3 / vexp" in text


def test_bench_peers_compile(restore_threads):
    """torch.compile of forward + backward runs and is timed on the first quick shape."""
    import pytest

    pytest.importorskip("torch")
    import shutil

    if not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("Inductor's CPU backend needs a C++ compiler")
    info, rows = _bench.run_peers(repeat=1, quick=True)
    assert "compile" not in info.get("skipped", {}), info["skipped"]["compile"]
    assert "compile" in info["peers"] and info["compile"] == "first shape only (quick)"
    assert rows[0]["compile/xk"] > 0 and "compile/xk" not in rows[1]


def test_bench_peers_times_avx2_beside_avx512(restore_threads, monkeypatch):
    """Where AVX-512 runs, every row also times the AVX2 kernels (avx2/xk), the level set for the
    call and put back after it (faked here: the level calls are recorded, not made)."""
    calls = []
    monkeypatch.setattr(_bench, "_torch", lambda: None)
    monkeypatch.setattr(_bench, "_jax", lambda threads: None)
    monkeypatch.setattr(xentkit, "simd_level", lambda: "avx512")
    monkeypatch.setattr(xentkit, "simd_levels_available", lambda: ["avx512", "avx2", "scalar"])
    monkeypatch.setattr(xentkit, "set_simd_level", calls.append)
    info, rows = _bench.run_peers(repeat=1, quick=True)
    assert all(r["avx2/xk"] > 0 for r in rows)
    assert calls and calls[::2] == ["avx2"] * (len(calls) // 2)
    assert calls[1::2] == ["avx512"] * (len(calls) // 2)
    assert info["peers"] == [] and "eager" in info["skipped"] and "jax" in info["skipped"]


def test_settle_waits_for_the_other_threads(monkeypatch):
    """_settle (before every timed call of the peers table) returns once a 1 ms sleep passes
    without the process's other threads using a CPU, and waits out its limit while they do.
    The clocks are simulated: other threads use `busy_ms` of CPU per millisecond of sleep for
    the first `busy_sleeps` sleeps."""
    import types

    class Clock:
        def __init__(self, busy_sleeps, busy_ms=1.0):
            self.now = self.proc = self.thread = 0.0
            self.sleeps, self.busy_sleeps, self.busy_ms = 0, busy_sleeps, busy_ms

        def sleep(self, s):
            self.now += s
            self.sleeps += 1
            if self.sleeps <= self.busy_sleeps:
                self.proc += self.busy_ms * s

    def use(clock):
        fake = types.SimpleNamespace(perf_counter=lambda: clock.now, sleep=clock.sleep,
                                     process_time=lambda: clock.proc,
                                     thread_time=lambda: clock.thread)
        monkeypatch.setattr(_bench, "time", fake)

    quiet = Clock(busy_sleeps=0)
    use(quiet)
    _bench._settle(limit=0.05)
    assert quiet.sleeps == 1  # quiet at once: one sleep

    busy = Clock(busy_sleeps=10)
    use(busy)
    _bench._settle(limit=0.05)
    assert busy.sleeps == 11  # ten busy sleeps, then the first quiet one

    always = Clock(busy_sleeps=10**9)
    use(always)
    _bench._settle(limit=0.05)
    assert 49 <= always.sleeps <= 51  # never quiet: the limit, 50 sleeps of 1 ms

    light = Clock(busy_sleeps=10**9, busy_ms=0.1)  # 0.1 ms per ms: under the 0.2 ms threshold
    use(light)
    _bench._settle(limit=0.05)
    assert light.sleeps == 1


def test_time_group_settles_and_times_every_callable():
    calls = []
    times = _bench._time_group({"a": lambda: calls.append("a"), "b": lambda: calls.append("b"),
                                "none": None}, 3, settle=True)
    assert calls == ["a", "b"] * 4  # one untimed warm-up each, then three rounds in turn
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())
