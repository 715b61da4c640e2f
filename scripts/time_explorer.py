"""Time explorer updates at n = 4096: wall and CPU (thread) time of the synchronous part.

Every control is set REPEATS times on MaskExplorer(seq_len=4096) (BigBird unless the control
belongs to another pattern); each measured update starts from or ends at n = 4096 (seq_len:
2048 -> 4096 and 8192 -> 4096, the steps away from 4096 are not measured). Values differ
from one repeat to the next where the control allows, so pattern caches are mostly cold;
`--cold` also empties the explorer's caches (patterns, reach, q/k, the views' kept ticks
and labels) before each measured update: every measured update is a first visit.

Per control: median wall time of the synchronous update (what the explorer reports as
"updated in"), its CPU (thread) time, and "done": wall time until every view shows the new
settings (the reachability view included when it is computed on the worker thread).

    python scripts/time_explorer.py [--repeats 3] [--cold] [--verbose]
"""

import argparse
import os
import statistics
import time

from sparse_attn_edu.widgets import MaskExplorer

ap = argparse.ArgumentParser()
ap.add_argument("--repeats", type=int, default=3)
ap.add_argument("--cold", action="store_true")
ap.add_argument("--verbose", action="store_true")
args = ap.parse_args()
R = args.repeats

e = MaskExplorer(seq_len=4096)
e.wait()


def clear_caches():
    """Forget computed patterns, reaches and q/k, and the views' kept ticks and labels
    (the explorer's private caches: this script measures the explorer from outside)."""
    for cache in (e._patterns, e._receptive, e._fractions, e._connect, e._qk):
        cache.clear()
    for view in e._views.values():
        view._layers_2.clear()


def setto(name, value, measure=True):
    """Set one control; return (wall, cpu) seconds of the synchronous update."""
    if measure and args.cold:
        clear_caches()
    c0 = time.thread_time()
    w0 = time.perf_counter()
    e.controls[name].value = value
    w1 = time.perf_counter()
    c1 = time.thread_time()
    views = dict(e.timings)
    e.wait()
    w2 = time.perf_counter()
    if e.error:
        raise SystemExit(f"{name}={value}: {e.error}")
    if measure and args.verbose:
        print(
            f"  {name:>13}={value!s:<15} wall {1000 * (w1 - w0):6.0f} ms"
            f"  cpu {1000 * (c1 - c0):6.0f} ms  views "
            + str({k: round(1000 * v) for k, v in views.items()})
            + f"  reach(bg) {1000 * e.timings.get('reach', 0):.0f}",
            flush=True,
        )
    return w1 - w0, c1 - c0, w2 - w0


def measured(control, values):
    """Steps that set `control` to each of `values`, every one of them timed."""
    return [(control, value, True) for value in values]


def series(label, setup, steps):
    """setup: unmeasured (name, value) list; steps: (name, value, measure) list."""
    with e.hold():
        for name, value in setup:
            e.controls[name].value = value
    e.wait()
    walls, cpus, dones = [], [], []
    for name, value, measure in steps:
        w, c, d = setto(name, value, measure)
        if measure:
            walls.append(w)
            cpus.append(c)
            dones.append(d)
    rows.append((label, walls, cpus, dones))
    print(
        f"{label:<28} median wall {1000 * statistics.median(walls):5.0f} ms  cpu "
        f"{1000 * statistics.median(cpus):5.0f} ms  done {1000 * statistics.median(dones):5.0f} ms"
        f"  (wall {', '.join(f'{1000 * w:.0f}' for w in walls)})",
        flush=True,
    )


rows = []
BIGBIRD = [("pattern", "bigbird"), ("seq_len", 4096), ("block_size", 64), ("causal", False)]
LONGFORMER = [("pattern", "longformer"), ("seq_len", 4096), ("block_size", 64), ("causal", False)]
print(
    f"{time.strftime('%Y-%m-%d %H:%M')} UTC, {os.cpu_count()} CPUs, repeats {R}, "
    f"{'cold' if args.cold else 'warm'} caches",
    flush=True,
)
print(f"load average before: {os.getloadavg()}", flush=True)

series(
    "pattern (switch)",
    BIGBIRD,
    measured(
        "pattern", (["longformer", "sliding_window", "dilated_window", "bigbird"] * R)[: max(R, 4)]
    ),
)
series(
    "seq_len 2048 -> 4096",
    BIGBIRD,
    [s for i in range(R) for s in [("seq_len", 2048, False), ("seq_len", 4096, True)]],
)
series(
    "seq_len 8192 -> 4096",
    BIGBIRD,
    [s for i in range(R) for s in [("seq_len", 8192, False), ("seq_len", 4096, True)]],
)
series(
    "seq_len 4096 -> 2048",
    BIGBIRD,
    [s for i in range(R) for s in [("seq_len", 2048, True), ("seq_len", 4096, False)]],
)
BLOCK_SIZES = [32, 128, 64, 16, 64, 32, 128, 64][: max(R, 3) * 2]
TOGGLE = ([True, False] * ((R + 1) // 2 + 1))[: R + 1]
DILATED = [("pattern", "dilated_window"), ("seq_len", 4096)]
# (label, starting controls, the control moved, the values it takes in turn)
for label, base, control, values in [
    ("block_size (bigbird)", BIGBIRD, "block_size", BLOCK_SIZES),
    ("block_size (longformer)", LONGFORMER, "block_size", BLOCK_SIZES),
    ("window (longformer)", LONGFORMER, "window", [128, 512, 256, 64, 1024][: R + 2]),
    ("global_tokens (longformer)", LONGFORMER, "global_tokens", [0, 8, 2, 32, 1][: R + 2]),
    ("dilation (dilated)", DILATED, "dilation", [3, 4, 2, 5, 6][: R + 2]),
    ("window_blocks (bigbird)", BIGBIRD, "window_blocks", [5, 1, 3, 7, 9][: R + 2]),
    ("global_blocks (bigbird)", BIGBIRD, "global_blocks", [1, 3, 0, 2, 4][: R + 2]),
    ("random_blocks (bigbird)", BIGBIRD, "random_blocks", [2, 4, 1, 5, 3][: R + 2]),
    ("seed (bigbird)", BIGBIRD, "seed", [5, 9, 13, 17, 21, 25][: R + 2]),
    ("head (bigbird)", BIGBIRD, "head", [1, 2, 3, 0, 1][: R + 2]),
    ("layers", BIGBIRD, "layers", [3, 4, 1, 5, 2][: R + 2]),
    ("causal (bigbird)", BIGBIRD, "causal", TOGGLE),
    ("causal (longformer)", LONGFORMER, "causal", TOGGLE),
    ("query", BIGBIRD, "query", [100, 3000, 2047, 4095, 7][: R + 2]),
]:
    series(label, base, measured(control, values))
print(f"load average after: {os.getloadavg()}", flush=True)
worst = max(rows, key=lambda row: statistics.median(row[1]))
print(f"worst median (wall): {worst[0]} {1000 * statistics.median(worst[1]):.0f} ms")
print("| control | median wall ms | median cpu ms | median done ms | runs (wall ms) |")
print("|---|---:|---:|---:|---|")
for label, walls, cpus, dones in rows:
    print(
        f"| {label} | {1000 * statistics.median(walls):.0f} | {1000 * statistics.median(cpus):.0f} "
        f"| {1000 * statistics.median(dones):.0f} | {', '.join(f'{1000 * w:.0f}' for w in walls)} |"
    )
e.close()
