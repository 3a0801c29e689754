"""benchmarks/ab_builds.py: builds imported side by side under their own names, each running its
own compiled core, timed call by call, with a byte comparison of their outputs."""

import importlib.util
import pathlib
import sys

import numpy as np
import pytest

import xentkit

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "ab_builds.py"


@pytest.fixture(scope="module")
def ab():
    spec = importlib.util.spec_from_file_location("ab_builds", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_two_copies_of_the_current_build(ab, capsys):
    before = sys.modules.get("xentkit._core")
    rows = ab.run({"a": "current", "b": "current"}, ["40x7", "2x5x3x20", "bce:30x4"], repeat=2,
                  flush_mb=1)
    # The copies' cores registered themselves as xentkit._core while loading; the entry is
    # put back, so this process's xentkit still finds its own.
    assert sys.modules.get("xentkit._core") is before
    assert [r[0] for r in rows] == ["40x7", "2x5x3x20", "bce:30x4"]
    for _, times, same in rows:
        assert same
        assert set(times) == {"a", "b"}
        for tm in times.values():
            assert len(tm["warm"]) == 2 and len(tm["cold"]) == 2
            assert all(v > 0 for v in tm["warm"] + tm["cold"])
    table = ab.format_rows(rows)
    assert table.count("| yes |") == 6 and "NO" not in table
    # Each copy runs its own core (a loaded module of another path would be refused).
    mod = sys.modules["xentkit_a"]
    assert pathlib.Path(mod._core.__file__).parent == pathlib.Path(mod.__file__).parent
    x = np.random.default_rng(1).normal(size=(9, 4)).astype(np.float32)
    t = np.arange(9) % 4
    assert np.array_equal(mod.cross_entropy(x, t, reduction="none"),
                          xentkit.cross_entropy(x, t, reduction="none"))


@pytest.mark.parametrize("argv, message", [
    (["a"], "expected LABEL=DIR"),
    (["a=current", "a=current"], "given twice"),
    (["a=current", "--repeat", "0"], "--repeat: expected >= 1"),
    (["1x=current"], "LABEL an identifier"),
])
def test_bad_arguments(ab, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        ab.main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_shapes_and_folders(ab, tmp_path):
    for text, message in [("10", "at least two"), ("ax3", "integers"), ("sig:4x4", "bce:NxC"),
                          ("0x4", ">= 1")]:
        with pytest.raises(SystemExit, match=message):
            ab._parse_shape(text)
    with pytest.raises(SystemExit, match="expected an installed package"):
        ab.run({"a": str(tmp_path)}, ["4x4"], repeat=1, flush_mb=1)
