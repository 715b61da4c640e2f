"""Tile loads through TMA descriptors against per-thread pointers, side by side on a GPU.

Runs the Triton stage both ways in one process, in interleaved rounds (median of 3
``triton.testing.do_bench`` medians each), on the reference shapes of DESIGN.md: bf16,
B=2, H=16, D=64, Longformer w=512 + 128 global tokens and BigBird 64/3/2/3, n = 16384 and
32768. Writes ``gpu_tma_side_by_side.json`` into the folder given (default: the current one).
Needs a Hopper GPU; a benchmark, so it asserts nothing.

    python scripts/tma_side_by_side.py notebooks/results
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch
import triton
import triton.testing

from sparse_attn_edu import patterns
from sparse_attn_edu import triton_kernels as tk

BATCH, HEADS, HEAD_DIM, BLOCK = 2, 16, 64, 64


def reference_pattern(name: str, n: int) -> patterns.Pattern:
    if name == "longformer":
        return patterns.longformer(n, 512, tuple(range(128)))
    return patterns.bigbird(n, BLOCK, 3, 2, 3, seed=0)


def side_by_side(pattern, q, k, v, dout) -> dict:
    """Median fwd and fwd+bwd ms with pointers (False) and descriptors (True), interleaved."""

    def forward():
        with torch.no_grad():
            return tk.attention(q, k, v, pattern)

    def forward_backward():
        return torch.autograd.grad(tk.attention(q, k, v, pattern), (q, k, v), dout)

    runs = {False: [], True: []}
    for _ in range(3):
        for tma in (False, True):
            tk.USE_TMA = tma
            fwd = triton.testing.do_bench(forward, return_mode="median")
            runs[tma].append((fwd, triton.testing.do_bench(forward_backward, return_mode="median")))
    return runs


def main(out_dir: Path) -> dict:
    report = {"torch": torch.__version__, "triton": triton.__version__,
              "device": torch.cuda.get_device_name()}  # fmt: skip
    tk.TMA_MIN_PAIRS = 0  # compare the two ways of loading at every size
    for n in (16384, 32768):
        gen = torch.Generator().manual_seed(0)
        q, k, v, dout = (
            torch.randn(BATCH, HEADS, n, HEAD_DIM, generator=gen).to("cuda", torch.bfloat16)
            for _ in range(4)
        )
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        for name in ("longformer", "bigbird"):
            pattern = reference_pattern(name, n)
            kl = tk.kernel_layout(pattern, BLOCK, "cuda")
            flops = 4 * BATCH * HEADS * kl.layout.active_tiles * BLOCK**2 * HEAD_DIM
            for tma, times in side_by_side(pattern, q, k, v, dout).items():
                fwd = statistics.median(t[0] for t in times)
                fwd_bwd = statistics.median(t[1] for t in times)
                report[f"{name}/{n}/tma={tma}"] = {
                    "fwd_ms": fwd, "fwd_bwd_ms": fwd_bwd, "fwd_tflops": flops / fwd / 1e9,
                    "fwd_bwd_tflops": 3.5 * flops / fwd_bwd / 1e9, "runs": times,
                }  # fmt: skip
                print(f"{name} n={n} tma={tma}: fwd {fwd:.3f} ms, fwd+bwd {fwd_bwd:.3f} ms")
    (out_dir / "gpu_tma_side_by_side.json").write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
