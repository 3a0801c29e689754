"""The C++ SDK inside the installed package: examples/cpp configures with find_package(xentkit)
against xentkit.cmake_dir(), builds, links and passes its own checks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import xentkit

EXAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", "cpp")


def _cmake():
    found = shutil.which("cmake")
    assert found, "cmake is needed (it is in the test extra: pip install '.[test]')"
    return found


def test_cmake_dir_cli_matches_function():
    proc = subprocess.run([sys.executable, "-m", "xentkit", "--cmake-dir"], capture_output=True,
                          text=True, check=True)
    assert proc.stdout.strip() == xentkit.cmake_dir()


def test_example_builds_against_package_sdk(tmp_path):
    cmake = _cmake()
    build = tmp_path / "build"
    env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL="2")
    configure = subprocess.run(
        [cmake, "-S", EXAMPLE, "-B", str(build), f"-Dxentkit_DIR={xentkit.cmake_dir()}",
         "-DCMAKE_BUILD_TYPE=Release"], capture_output=True, text=True, env=env)
    assert configure.returncode == 0, configure.stdout + configure.stderr
    assert f"xentkit {xentkit.__version__} from {xentkit.cmake_dir()}" in configure.stdout
    assert f"(CUDA built: {'ON' if xentkit.cuda_built() else 'OFF'})" in configure.stdout
    built = subprocess.run([cmake, "--build", str(build)], capture_output=True, text=True,
                           env=env)
    assert built.returncode == 0, built.stdout + built.stderr
    run = subprocess.run([str(build / "xentkit_example")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"xentkit {xentkit.__version__}" in run.stdout
    assert "all checks passed" in run.stdout
    linear = subprocess.run([str(build / "xentkit_linear_example")], capture_output=True,
                            text=True)
    assert linear.returncode == 0, linear.stdout + linear.stderr
    assert "over 5 chunks of 8 rows" in linear.stdout and "all checks passed" in linear.stdout
