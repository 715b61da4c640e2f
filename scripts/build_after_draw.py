"""The index build's host code, right after making a BigBird pattern and on one made earlier.

Runs on a CPU (``python scripts/build_after_draw.py [threads]``; writes
``notebooks/results/build_after_draw.json``): the two build kernels are
replaced by stubs, so what is timed is the host's Python and PyTorch work of
``triton_kernels.kernel_layout`` alone. Making a BigBird pattern draws its random blocks with
PyTorch operations over an (nb, nb) table; the question is whether that work, just before
the build, slows the build itself (it is not part of it). Prints medians over 60 builds,
three rounds of each order.
"""

import datetime
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # "running in the interpreter"
    from sparse_attn_edu import triton_kernels, triton_layout

import torch

from sparse_attn_edu import patterns


class StubKernel:
    """Takes a launch and does nothing, but fill the counts (argument 2) with a plausible
    3, so that the host sizes every table as it would."""

    def __init__(self, fills_counts: bool):
        self.fills_counts = fills_counts

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            if self.fills_counts:
                args[2].fill_(3)

        return launch


def median_us(builds) -> float:
    times = []
    for make in builds:
        pattern = make()
        start = time.perf_counter()
        triton_kernels.kernel_layout(pattern, 64, "cpu")
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1e6)


def main() -> None:
    if len(sys.argv) > 1:
        torch.set_num_threads(int(sys.argv[1]))
    triton_layout._classify_kernel = StubKernel(fills_counts=True)
    triton_layout._lists_kernel = StubKernel(fills_counts=False)

    def draw():
        return patterns.bigbird(32768, 64, 3, 2, 3, seed=0)

    median_us([draw] * 10)  # warm-up
    rounds = []
    for _ in range(3):
        made_earlier = [draw() for _ in range(60)]
        earlier = median_us([made_earlier.pop for _ in range(60)])
        right_after = median_us([draw] * 60)
        rounds.append({"made_earlier_us": earlier, "made_right_before_us": right_after})
        print(f"made earlier: {earlier} us, made right before: {right_after} us", flush=True)
    report = {
        "what": __doc__.split("\n\n")[0],
        "command": " ".join(["python scripts/build_after_draw.py", *sys.argv[1:]]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch_threads": torch.get_num_threads(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "pattern": "bigbird(32768, 64, 3, 2, 3), block 64; medians over 60 builds per round",
        "rounds": rounds,
    }
    out = Path(__file__).resolve().parent.parent / "notebooks" / "results" / "build_after_draw.json"
    out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
