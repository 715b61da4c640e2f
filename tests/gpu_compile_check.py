"""Compile the index-build kernels for an H100/H200 (sm_90) without a GPU.

Run as a script (tests/test_gpu_compile.py does): Triton's interpreter, which the tests
use on CPU, runs a kernel's Python as Python, so it accepts code that the compiler
refuses. The usual case: Triton passes an int argument equal to 1 as the constant 1, and
a constant has no ``.to``. Each kernel is compiled for each set of flags once plain and
once with every int argument made the constant 1; it prints one line per compile and
exits non-zero at the first failure.
"""

import os
import sys

os.environ["TRITON_INTERPRET"] = "0"  # compile, do not interpret

import torch  # noqa: E402

torch.cuda.is_available = lambda: True  # the module would otherwise choose the interpreter

from triton import compile as triton_compile  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from sparse_attn_edu import triton_layout as L  # noqa: E402

SM90 = GPUTarget("cuda", 90, 32)
# In triton_layout.py pointers are lower case and int arguments upper case.
POINTER_TYPES = {"kinds": "*i8", "masks": "*u8", "blocks": "*u8"}  # the rest: *i32
MODES = [  # the constexpr flags of one build: (OFFSETS, TOKENS, HAS_BLOCKS, TOKEN_STEPS)
    (L.RANGE, L.RUN, False, 0),
    (L.PREFIX, L.LIST, False, 8),
    (L.NO_OFFSETS, L.NO_TOKENS, True, 0),
]


def constants(fn, mode) -> dict:
    offsets, tokens, has_blocks, steps = mode
    known = {"BLOCK_BS": 16, "BLOCK_NB": 16, "OFFSETS": offsets, "TOKENS": tokens,
             "HAS_BLOCKS": has_blocks, "TOKEN_STEPS": steps}  # fmt: skip
    return {p.name: known[p.name] for p in fn.params if p.is_constexpr}


def compile_with(fn, mode, ones) -> None:
    consts = constants(fn, mode) | {name: 1 for name in ones}
    signature = {
        p.name: "constexpr" if p.name in consts
        else "i32" if p.name.isupper() else POINTER_TYPES.get(p.name, "*i32")
        for p in fn.params
    }  # fmt: skip
    triton_compile(ASTSource(fn=fn, signature=signature, constexprs=consts), target=SM90)


def main() -> int:
    for fn in (L._classify_kernel, L._lists_kernel, L._plan_kernel):
        ints = [p.name for p in fn.params if not p.is_constexpr and p.name.isupper()]
        flags = MODES if any(p.name == "OFFSETS" for p in fn.params) else MODES[:1]
        variants = [(mode, ones) for mode in flags for ones in ((), tuple(ints))]
        for mode, ones in variants:
            try:
                compile_with(fn, mode, ones)
            except Exception as error:  # noqa: BLE001 -- report which variant, then stop
                print(f"FAILED {fn.__name__} mode={mode} ones={ones}: {error}")
                return 1
            print(f"ok {fn.__name__} mode={mode} ones={ones}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
