"""Compile the kernels for an H100/H200 (sm_90) without a GPU.

Run as a script (tests/test_gpu_compile.py does): Triton's interpreter, which the tests
use on CPU, runs a kernel's Python as Python, so it accepts code that the compiler
refuses. The usual case: Triton passes an int argument equal to 1 as the constant 1, and
a constant has no ``.to``. Each kernel is compiled for each set of flags once plain and,
if its int arguments can specialize (the attention kernels'; the build kernels' never do),
once with every int argument made the constant 1; it prints one line per compile and
exits non-zero at the first failure. The attention kernels are compiled for bf16 with
pointer loads (TMA=False; the tensor-descriptor path runs in the H200 test runs only).
"""

import os
import sys

os.environ["TRITON_INTERPRET"] = "0"  # compile, do not interpret

import torch  # noqa: E402

torch.cuda.is_available = lambda: True  # the modules would otherwise choose the interpreter

from triton import compile as triton_compile  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from sparse_attn_edu import triton_kernels as K  # noqa: E402
from sparse_attn_edu import triton_layout as L  # noqa: E402

SM90 = GPUTarget("cuda", 90, 32)


def layout_type(name: str, known: dict) -> str:
    """In triton_layout.py pointers are lower case and int arguments upper case; `blocks`
    holds bits (bytes) or a recipe's random blocks (int32)."""
    if name.isupper():
        return "i32"
    blocks = "*u8" if known.get("BLOCKS") == L.BITS else "*i32"
    return {"kinds": "*i8", "masks": "*u8", "blocks": blocks}.get(name, "*i32")


ATTENTION_TYPES = {
    **dict.fromkeys(("Q", "K", "V", "Out", "DO", "DQ", "DK", "DV", "Dst"), "*bf16"),
    **dict.fromkeys(("LSE", "Delta", "OPart", "LSEPart", "DKPart", "DVPart", "DQPart", "Part"),
                    "*fp32"),
    **dict.fromkeys(("tables", "index", "tile"), "*i32"),
    "masks": "*u8", "scale": "fp32", "qk_scale": "fp32",
}  # fmt: skip


def attention_type(name: str, known: dict) -> str:
    return ATTENTION_TYPES.get(name, "i32")  # the rest: sizes and strides


LAYOUT_FLAGS = [  # one build's flags: how it reads the offsets, the tokens, the blocks
    {"OFFSETS": L.RANGE, "TOKENS": L.RUN, "BLOCKS": L.NO_BLOCKS, "TOKEN_STEPS": 0},
    {"OFFSETS": L.PREFIX, "TOKENS": L.LIST, "BLOCKS": L.NO_BLOCKS, "TOKEN_STEPS": 8},
    {"OFFSETS": L.NO_OFFSETS, "TOKENS": L.NO_TOKENS, "BLOCKS": L.BITS, "TOKEN_STEPS": 0},
    {"OFFSETS": L.RANGE, "TOKENS": L.NO_TOKENS, "BLOCKS": L.RECIPE, "TOKEN_STEPS": 0},
]
LAYOUT_SIZES = {"BLOCK_BS": 16, "BLOCK_NB": 16, "RANDOM": 3}
ATTENTION_SIZES = {"HEAD_DIM": 64, "BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_D": 64, "BLOCK": 64,
                   "EVEN_N": True, "PREC": "tf32", "TMA": False}  # fmt: skip
KERNELS = [  # (kernel, type of a runtime argument, sets of constexpr values to try)
    (L._classify_kernel, layout_type, [LAYOUT_SIZES | flags for flags in LAYOUT_FLAGS]),
    (L._lists_kernel, layout_type, [LAYOUT_SIZES | flags for flags in LAYOUT_FLAGS]),
    (L._plan_kernel, layout_type, [LAYOUT_SIZES]),
    *[(kernel, attention_type, [ATTENTION_SIZES]) for kernel in (
        K._forward_kernel, K._merge_rows_kernel, K._delta_kernel, K._dkdv_kernel,
        K._dq_kernel, K._sum_pieces_kernel)],
]  # fmt: skip


def compile_with(fn, arg_type, known: dict, ones: tuple) -> None:
    consts = {p.name: known[p.name] for p in fn.params if p.is_constexpr}
    consts |= dict.fromkeys(ones, 1)
    signature = {p.name: "constexpr" if p.name in consts else arg_type(p.name, known)
                 for p in fn.params}  # fmt: skip
    triton_compile(ASTSource(fn=fn, signature=signature, constexprs=consts), target=SM90)


def main() -> int:
    # The build kernels are launched straight from their compiled form (triton_layout._launch),
    # which is right only if no runtime argument specializes them and constexprs come last.
    for fn in (L._classify_kernel, L._lists_kernel, L._plan_kernel):
        kinds = [p.is_constexpr for p in fn.params]
        unspecialized = all(p.do_not_specialize and p.do_not_specialize_on_alignment
                            for p in fn.params if not p.is_constexpr)  # fmt: skip
        if not unspecialized or kinds != sorted(kinds):
            print(f"FAILED {fn.__name__}: specialized, or a constexpr before a runtime argument")
            return 1
    for fn, arg_type, constexpr_sets in KERNELS:
        specializing = [p for p in fn.params if not p.is_constexpr and not p.do_not_specialize]
        ints = tuple(p.name for p in specializing if arg_type(p.name, {}) == "i32")
        for known in constexpr_sets:
            for ones in ((), ints) if ints else ((),):
                try:
                    compile_with(fn, arg_type, known, ones)
                except Exception as error:  # noqa: BLE001 -- say which variant, then stop
                    print(f"FAILED {fn.__name__} {known} ones={ones}: {error} {error.__cause__!r}")
                    return 1
                print(f"ok {fn.__name__} ones={ones}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
