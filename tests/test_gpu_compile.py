"""The kernels compile for a GPU, checked on a machine without one.

The interpreter runs kernels as Python, so a kernel can pass every test here and still be
refused by the compiler on a GPU (an int argument Triton turned into the constant 1 has
no ``.to``: this broke the build on the H200 for tiny sequences once).
tests/gpu_compile_check.py compiles each kernel (the index build's three, the attention's
six) for sm_90; it needs a fresh process, because the interpreter mode is fixed when
triton is imported. First it checks that no runtime argument specializes the build
kernels, which are launched straight from their compiled form after the first launch.
"""

import subprocess
import sys
from pathlib import Path

CHECK = Path(__file__).with_name("gpu_compile_check.py")


def test_the_kernels_compile_for_sm90():
    run = subprocess.run(
        [sys.executable, str(CHECK)], capture_output=True, text=True, timeout=600,
        cwd=CHECK.parent.parent,
    )  # fmt: skip
    compiled = [line for line in run.stdout.splitlines() if line.startswith("ok ")]
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert len(compiled) == 21, run.stdout  # build: 9 flag sets; attention: 6 x (plain, ints as 1)
