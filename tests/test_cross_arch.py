"""The generic kernels built for aarch64 (run under qemu) against the same kernels built for
this x86-64 machine, which the rest of the suite checks against the NumPy reference
(``RNNFAST_ISA=generic``). Opt-in: ``RNNFAST_CROSS=1`` (CI's portability stage sets it), as
it needs ``aarch64-linux-gnu-g++`` and ``qemu-aarch64`` and takes about a minute."""

import os
import platform
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import ACTIVATIONS, assert_activation_within

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "tests" / "cross" / "engine_dump.cpp"
CROSS_CXX, QEMU = "aarch64-linux-gnu-g++", "qemu-aarch64"
SYSROOT = "/usr/aarch64-linux-gnu"

pytestmark = pytest.mark.skipif(os.environ.get("RNNFAST_CROSS") != "1",
                                reason="cross-architecture check: set RNNFAST_CROSS=1")


def _sources():
    """The kernel sources and the rest of the module but its bindings, as CMakeLists.txt
    lists them."""
    text = (ROOT / "CMakeLists.txt").read_text()
    kernels = re.search(r"set\(RF_KERNEL_SOURCES([^)]*)\)", text).group(1).split()
    module = re.search(r"pybind11_add_module\(_core MODULE([^)]*)\)", text).group(1).split()
    rest = [s for s in module if s.startswith("cpp/") and not s.startswith("cpp/bindings/")]
    assert kernels and rest
    return kernels, rest


def _build(cxx, out):
    """The harness on the generic kernels (the only ones an aarch64 build has), built by cxx."""
    out.mkdir()
    kernels, rest = _sources()
    common = [cxx, "-std=c++17", "-O2", "-fPIC", "-I", str(ROOT / "cpp")]
    jobs = [common + ["-DRF_ISA=generic", "-DRF_ISA_generic=1", "-fno-math-errno", "-c",
                      str(ROOT / s), "-o", str(out / (Path(s).stem + ".o"))] for s in kernels]
    jobs += [common + ["-DRF_X86=0", "-c", str(ROOT / s), "-o", str(out / (Path(s).stem + ".o"))]
             for s in rest]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for job, result in zip(jobs, pool.map(lambda j: subprocess.run(
                j, capture_output=True, text=True), jobs)):
            assert result.returncode == 0, f"{' '.join(job)}\n{result.stderr}"
    exe = out / "engine_dump"
    objects = sorted(str(p) for p in out.glob("*.o"))
    result = subprocess.run(common + ["-DRF_X86=0", str(HARNESS), *objects, "-o", str(exe),
                                      "-lpthread"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return exe


def _dump(cmd, out):
    result = subprocess.run([*cmd, str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return {k: np.fromfile(f"{out}.{k}") for k in ("f32", "f64", "ftz", "act")}


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    if platform.machine() != "x86_64":
        pytest.fail("the cross-architecture check runs on an x86-64 machine")
    missing = [t for t in (CROSS_CXX, QEMU, "g++") if shutil.which(t) is None]
    if missing or not Path(SYSROOT).is_dir():
        pytest.fail(f"RNNFAST_CROSS=1 but {missing or SYSROOT} not found "
                    "(Debian: g++-aarch64-linux-gnu qemu-user)")
    tmp = tmp_path_factory.mktemp("cross")
    with ThreadPoolExecutor(2) as pool:
        native, arm = pool.map(lambda a: _build(*a), [("g++", tmp / "x86_64"),
                                                      (CROSS_CXX, tmp / "aarch64")])
    return _dump([str(native)], tmp / "x86_64.out"), _dump([QEMU, "-L", SYSROOT, str(arm)],
                                                           tmp / "aarch64.out")


@pytest.mark.parametrize("dtype,tol", [("f32", 2e-4), ("f64", 1e-11)])
def test_aarch64_matches_x86_64(dumps, dtype, tol):
    """Forward, states, and every gradient of RNN (tanh, ReLU), LSTM and GRU: 2 layers, odd H
    bidirectional, sequences of several lengths, 1 and 2 threads. Rounding differs (aarch64
    fuses multiply-adds where x86-64's generic build does not)."""
    native, arm = dumps[0][dtype], dumps[1][dtype]
    assert native.size == arm.size and native.size > 10**6
    assert np.isfinite(native).all() and np.abs(native).max() > 1
    np.testing.assert_allclose(arm, native, rtol=tol, atol=tol)


def test_aarch64_flushes_denormals(dumps):
    """The kernels set FPCR.FZ on aarch64 (MXCSR's FTZ and DAZ on x86-64): products that are
    float32 denormals count as zero, where the same sum outside the kernels is not zero."""
    for native_or_arm in dumps:
        ftz = native_or_arm["ftz"]
        y, unflushed = ftz[:-1], ftz[-1]
        assert 0 < unflushed < np.finfo(np.float32).tiny
        assert (y == 0).all()


def test_aarch64_activations_error_bound(dumps):
    """The float32 exp, sigmoid and tanh within 1e-6 of float64 on both machines, as
    test_engine.py checks on x86-64. The comparison of whole models above allows 2e-4; an exp
    whose range reduction lost its fused multiply-add would pass it (built with
    -ffp-contract=off for aarch64, this test found exp errors of 3.9e-6)."""
    for native_or_arm in dumps:
        pairs = native_or_arm["act"].reshape(len(ACTIVATIONS), -1, 2)
        for kind in range(len(ACTIVATIONS)):
            x, got = pairs[kind, :, 0], pairs[kind, :, 1]
            assert x.size > 10**5 and np.isfinite(got).all()
            assert_activation_within(kind, x, got)
