"""The index build on a GPU, side by side: layout.py's PyTorch operations against
triton_layout.py's kernels, and both against one forward+backward pass.

Run on a CUDA machine from the repository root (``PYTHONPATH=. python
scripts/index_build_timing.py [n ...]``, n = 16384 32768 131072 by default); writes
``$OUT/gpu_index_build.json`` (or the current folder). Every build starts from a fresh
pattern (caches empty) after a first build has compiled the kernels; times are medians
with a synchronize before and after (``bench.median_build_seconds``). The builds of one
median are kept until it is taken, so each asks CUDA for new memory, as when a program
keeps several patterns; ``kernel_layout_released_ms`` drops each before the next, so
PyTorch's caching allocator hands the same memory back, as in the bench. It also checks
that both builds give the same layout, field by field, and the same work lists.
"""

from __future__ import annotations

import datetime
import json
import os
import sys

import torch
import triton

from sparse_attn_edu import patterns, triton_layout
from sparse_attn_edu import triton_kernels as tk
from sparse_attn_edu.bench import host_microseconds, median_build_seconds
from sparse_attn_edu.layout import build_layout

DEVICE = torch.device("cuda")
FIELDS = ("kinds", "row_count", "row_full_count", "row_index", "row_tile", "col_count",
          "col_full_count", "col_index", "col_tile", "tile_masks", "host_counts")  # fmt: skip
PATTERNS = {
    "longformer": lambda n: patterns.longformer(n, 512, tuple(range(128))),
    "longformer_one_global": lambda n: patterns.longformer(n, 512, (0,)),
    "bigbird": lambda n: patterns.bigbird(n, 64, 3, 2, 3, seed=0),
}


def median_ms(build, make, repeats: int, keep: bool = True) -> float:
    """Median time of build(fresh pattern) in ms, the bench's way (patterns made first)."""
    return median_build_seconds(build, make, repeats, DEVICE, keep) * 1e3


def measure(factory, n: int) -> dict:
    """One pattern at one n: both builds, their agreement, and one forward+backward."""

    def make():
        return factory(n)

    fast = triton_layout.build_from_parts(make(), 64, DEVICE, tk.MAX_TILES_PER_PROGRAM)
    slow = build_layout(make(), 64, DEVICE)
    planned = triton_layout.plan_work(slow.host_counts, tk.MAX_TILES_PER_PROGRAM, DEVICE)
    tk.kernel_layout(make(), 64, DEVICE)  # compiles the kernels
    batch = 1 if n > 32768 else 2
    q, k, v = (torch.randn(batch, 16, n, 64, device=DEVICE, dtype=torch.bfloat16,
                           requires_grad=True) for _ in range(3))  # fmt: skip
    grad, pattern = torch.randn_like(q), make()
    row = {
        "same_layout": all(torch.equal(getattr(fast[0], f), getattr(slow, f)) for f in FIELDS),
        "same_work": all(
            torch.equal(ours.items, theirs.items) and torch.equal(ours.merges, theirs.merges)
            for ours, theirs in zip(fast[1:3], planned, strict=True)
        ),
        "batch": batch,
        # The whole build: layout, work lists and masks (two kernels, one wait).
        "kernel_layout_ms": median_ms(lambda p: tk.kernel_layout(p, 64, DEVICE), make, 15),
        "kernel_layout_released_ms": median_ms(
            lambda p: tk.kernel_layout(p, 64, DEVICE), make, 15, keep=False
        ),
        # layout.py's build, then the planner as a kernel of its own (patterns without parts).
        "layout_py_ms": median_ms(lambda p: build_layout(p, 64, DEVICE), make, 7),
        "layout_py_and_plan_ms": median_ms(
            lambda p: triton_layout.plan_work(
                build_layout(p, 64, DEVICE).host_counts, tk.MAX_TILES_PER_PROGRAM, DEVICE
            ),
            make,
            7,
        ),
        "fwd_bwd_ms": triton.testing.do_bench(
            lambda: tk.attention(q, k, v, pattern).backward(grad),
            warmup=25,
            rep=200,
            return_mode="median",
        ),  # fmt: skip
    }
    row["build_share_of_fwd_bwd"] = row["kernel_layout_ms"] / row["fwd_bwd_ms"]
    return row


def main() -> None:
    host_before = host_microseconds(DEVICE)
    results = {}
    for name, factory in PATTERNS.items():
        for n in [int(arg) for arg in sys.argv[1:]] or (16384, 32768, 131072):
            results[f"{name}/{n}"] = row = measure(factory, n)
            print(name, n, {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
    report = {
        "what": __doc__.split("\n\n")[0].replace("\n", " "),
        "command": " ".join(["PYTHONPATH=. python scripts/index_build_timing.py", *sys.argv[1:]]),
        "device": torch.cuda.get_device_name(),
        "versions": {"torch": torch.__version__, "triton": triton.__version__},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "shapes": "bf16, H=16, D=64, block 64; B=2 (B=1 at n=131072); Longformer w=512",
        "host_us": {"before": host_before, "after": host_microseconds(DEVICE)},
        "results": results,
    }
    path = os.path.join(os.environ.get("OUT", "."), "gpu_index_build.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
