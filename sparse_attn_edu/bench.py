"""Benchmark CLI: every stage and the peers a user would pick instead, on the same inputs.

    python -m sparse_attn_edu.bench --device cpu --seq-lens 4096 8192 16384 --out notebooks/results

Methods (``--methods``):

* our stages: ``dense`` (stage 1, ignores the pattern), ``masked`` (stage 2), ``blocked``
  (stage 3), ``triton`` (stage 4; CUDA only, when ``triton_kernels`` imports);
* peers: ``sdpa_dense`` (``scaled_dot_product_attention`` without a mask: FlashAttention on
  GPU, the fused CPU kernel here), ``sdpa_mask`` (the same with the bool mask),
  ``flex`` (FlexAttention compiled, with a BlockMask of the same pattern), ``flex_eager``
  (FlexAttention without compiling), ``hf_longformer`` (Hugging Face's
  ``LongformerSelfAttention``, Longformer pattern only, when ``transformers`` is installed;
  it includes its q/k/v projections).

Each (pattern, n, method) runs in a fresh subprocess, like a user's script: it builds the
method's mask or index structure (``first_build_s``, with one-time costs such as the CUDA
context; ``build_s`` is then the median over fresh patterns), compiles or warms up (``warmup_s``,
which holds FlexAttention's compile time), then measures the peak memory of one call above
what was allocated before it (CPU: the kernel's peak RSS, reset through
/proc/self/clear_refs; GPU: ``torch.cuda.max_memory_allocated``), then the median time with
``torch.utils.benchmark`` (CPU) or ``triton.testing.do_bench`` (GPU, CUDA events).
TFLOP/s count the work each method really computes: 4 * B * H * tiles * bs^2 * D forward
(all n^2 pairs for the dense kernels; x 3.5 with the backward pass). Configurations whose
n x n tensors cannot fit are skipped with a note. The JSON holds the device, library
versions, date and the exact command; the PNG plots time and memory against n on log-log
axes. Benchmarks report, they never assert.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from . import blocked, dense, masked, patterns
from ._checks import available_bytes
from .layout import build_layout

STAGES = ("dense", "masked", "blocked", "triton")
PEERS = ("sdpa_dense", "sdpa_mask", "flex", "flex_eager", "hf_longformer")
METHODS = STAGES + PEERS
BWD_FLOP_FACTOR = 3.5  # forward + backward = 1 + 2.5 forward matmul passes
MEMORY_HEADROOM = 0.7  # skip a configuration whose estimate exceeds 70% of free memory


# ---- the workload -----------------------------------------------------------------------


def make_pattern(args, n: int) -> patterns.Pattern:
    if args.pattern == "longformer":
        return patterns.longformer(n, args.window, tuple(range(args.global_tokens)))
    return patterns.bigbird(n, args.bigbird_block, 3, 2, 3, seed=0)


def make_inputs(args, n: int, requires_grad: bool):
    g = torch.Generator().manual_seed(0)  # the same q, k, v for every method
    shape = (args.batch, args.heads, n, args.head_dim)
    dtype = getattr(torch, args.dtype)
    return [
        torch.randn(shape, generator=g).to(args.device, dtype).requires_grad_(requires_grad)
        for _ in range(3)
    ]


def score_copies(method: str, backward: bool) -> int:
    """(B, H, n, n) tensors a method holds at once (0: its memory is O(n))."""
    copies = {"dense": dense.SCORE_COPIES, "masked": masked.SCORE_COPIES, "flex_eager": 4}
    return copies.get(method, 0) * (2 if backward else 1)


def too_big(args, method: str, n: int) -> str | None:
    """A note when the method's n x n tensors cannot fit in free memory, else None."""
    element = torch.empty((), dtype=getattr(torch, args.dtype)).element_size()
    needed = score_copies(method, args.backward) * args.batch * args.heads * n * n * element
    if method in ("masked", "sdpa_mask", "flex_eager"):
        needed += n * n * 4  # the bool mask, and a float copy of it in SDPA
    free = available_bytes(torch.device(args.device))
    if needed > MEMORY_HEADROOM * free:
        return f"skipped: needs ~{needed / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
    return None


def build(args, method: str, pattern: patterns.Pattern):
    """The method's mask or index structure for `pattern` (None when it needs none)."""
    device = torch.device(args.device)
    if method in ("masked", "sdpa_mask"):
        return pattern.mask.to(device)
    if method == "blocked":
        return build_layout(pattern, args.block_size, device)
    if method == "triton":
        from . import triton_kernels

        # The layout and the kernels' work lists: everything a call needs before launching.
        return triton_kernels.kernel_layout(pattern, args.block_size, device).layout
    if method in ("flex", "flex_eager"):
        from torch.nn.attention.flex_attention import create_block_mask

        n = pattern.seq_len
        return create_block_mask(pattern.to_mask_mod(), None, None, n, n, device=device)
    return None


def build_seconds(args, method: str, n: int, repeats: int = 5) -> float:
    """Median time to build the structure for a fresh pattern (caches start empty), after
    the first build has paid for one-time costs (CUDA context, kernel compilation)."""
    return median_build_seconds(
        lambda pattern: build(args, method, pattern),
        lambda: make_pattern(args, n),
        repeats,
        torch.device(args.device),
    )


def median_build_seconds(build_one, make, repeats: int, device, keep: bool = False) -> float:
    """Median time of build_one(pattern) over `repeats` fresh patterns from make(), the
    device idle before and after each. Without `keep`, each pattern (and the structure it
    caches) is dropped after its build, so the allocator hands the same memory back; with
    it, all stay alive, so each build asks for new memory, as when a program keeps several.
    """
    # The patterns are made first. Making one is not part of the build, and BigBird's
    # random draw just before it made the build's host code about 2-2.5x slower than on a
    # pattern made earlier (on a CPU, kernels stubbed: scripts/build_after_draw.py).
    fresh = [make() for _ in range(repeats)]
    times, kept = [], []
    for _ in range(repeats):
        pattern = fresh.pop()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        built = build_one(pattern)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        if keep:
            kept.append((pattern, built))
    return statistics.median(times)


def prepare(args, method: str, pattern: patterns.Pattern, n: int):
    """Build the method's structure; return (function of q, k, v, flops)."""
    B, H, D = args.batch, args.heads, args.head_dim
    all_pairs = 4 * B * H * n * n * D
    F = torch.nn.functional
    structure = build(args, method, pattern)
    if method == "dense":
        return (lambda q, k, v: dense.attention(q, k, v)), all_pairs
    if method == "masked":
        return (lambda q, k, v: masked.attention(q, k, v, structure)), all_pairs
    if method in ("blocked", "triton"):
        tiles = structure.active_tiles * (H if structure.num_layout_heads == 1 else 1)
        flops = 4 * B * tiles * args.block_size**2 * D
        if method == "blocked":
            fn = blocked.attention
        else:
            from . import triton_kernels

            fn = triton_kernels.attention
        return (lambda q, k, v: fn(q, k, v, pattern, block_size=args.block_size)), flops
    if method == "sdpa_dense":
        return (lambda q, k, v: F.scaled_dot_product_attention(q, k, v)), all_pairs
    if method == "sdpa_mask":
        mask = structure
        return (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)), all_pairs
    if method in ("flex", "flex_eager"):
        from torch.nn.attention.flex_attention import flex_attention

        block_mask = structure
        tiles = int(block_mask.kv_num_blocks.sum())
        if block_mask.full_kv_num_blocks is not None:
            tiles += int(block_mask.full_kv_num_blocks.sum())
        flops = 4 * B * H * tiles * block_mask.BLOCK_SIZE[0] * block_mask.BLOCK_SIZE[1] * D
        if method == "flex":
            # Compile afresh, as a new process would: after earlier shapes in this process,
            # torch.compile would switch to a slower shape-generic kernel.
            torch.compiler.reset()
        kernel = torch.compile(flex_attention) if method == "flex" else flex_attention
        # Eager Flex warns that it materializes the scores: that is what it measures.
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return (lambda q, k, v: kernel(q, k, v, block_mask=block_mask)), flops
    if method == "hf_longformer":
        return hf_longformer(args, n, torch.device(args.device)), None
    raise ValueError(f"expected a method in {METHODS}, got {method!r}")


def hf_longformer(args, n: int, device: torch.device):
    """Hugging Face's LongformerSelfAttention on the hidden states q viewed as (B, n, H*D)."""
    from transformers import LongformerConfig
    from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

    config = LongformerConfig(
        hidden_size=args.heads * args.head_dim,
        num_attention_heads=args.heads,
        attention_window=[args.window],
        attention_probs_dropout_prob=0.0,
    )
    module = LongformerSelfAttention(config, layer_id=0).to(device, getattr(torch, args.dtype))
    flags = torch.zeros(args.batch, n, device=device)
    flags[:, : args.global_tokens] = 10000.0  # HF's convention: +10000 marks a global token
    is_global = flags > 0

    def run(q, k, v):
        hidden = q.transpose(1, 2).reshape(args.batch, n, -1)
        return module(
            hidden,
            attention_mask=flags,
            is_index_masked=flags < 0,
            is_index_global_attn=is_global,
            is_global_attn=bool(is_global.any()),
        )[0]

    return run


# ---- one measurement (runs in a fresh process) --------------------------------------------


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def peak_extra_bytes(call, device: torch.device) -> int:
    """Peak memory one call takes above what is allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        call()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS counter (VmHWM) to the current RSS
    before = _rss_kib("VmRSS")
    call()
    return (_rss_kib("VmHWM") - before) * 1024


def median_seconds(call, device: torch.device, min_run_time: float) -> float:
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(call, return_mode="median") / 1e3
    from torch.utils import benchmark

    timer = benchmark.Timer(stmt="call()", globals={"call": call})
    return timer.blocked_autorange(min_run_time=min_run_time).median


def make_call(fn, q, k, v, backward: bool):
    """A no-argument call: the forward, or the forward and the gradients of q, k, v."""
    if not backward:
        return lambda: fn(q, k, v)
    grad_out = torch.randn_like(q)
    return lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), grad_out)


def measure(args, method: str, n: int) -> dict:
    """Time and memory of one (pattern, n, method), forward and optionally forward+backward."""
    device = torch.device(args.device)
    result = {"pattern": args.pattern, "n": n, "method": method}
    note = too_big(args, method, n)
    if note:
        return {**result, "status": note}
    pattern = make_pattern(args, n)

    start = time.perf_counter()
    fn, flops = prepare(args, method, pattern, n)
    if device.type == "cuda":
        torch.cuda.synchronize()
    result["first_build_s"] = time.perf_counter() - start
    # The median over as many fresh patterns as fit in about a second, 2 to 25: a quick
    # build (index lists, host-bound) is noisy, a slow one (an n x n mask) needs fewer.
    once = build_seconds(args, method, n, 1)
    result["build_s"] = build_seconds(args, method, n, max(2, int(1 / max(once, 0.04))))

    modes = [("fwd", False)] + ([("fwd_bwd", True)] if args.backward else [])
    if method == "triton" and device.type == "cuda":
        from . import triton_kernels

        # How the kernels read tiles: Hopper's copy engine (TMA) or per-thread pointers.
        kl = triton_kernels.kernel_layout(pattern, args.block_size, device)
        pairs = kl.pairs_per_head * args.batch * args.heads
        tma = triton_kernels._uses_tma(make_inputs(args, n, False), pairs)
        result["tile_loads"] = "tma" if tma else "pointers"
    for mode, grad in modes:
        call = make_call(fn, *make_inputs(args, n, grad), grad)
        start = time.perf_counter()
        try:
            call()  # warm-up: FlexAttention compiles here, caches fill
        except (NotImplementedError, RuntimeError) as err:  # e.g. no CPU backward in Flex
            result[f"{mode}_note"] = f"not supported: {str(err).splitlines()[0]}"
            continue
        if device.type == "cuda":
            torch.cuda.synchronize()
        result[f"warmup_{mode}_s"] = time.perf_counter() - start
        result[f"peak_{mode}_mb"] = peak_extra_bytes(call, device) / 2**20
        seconds = median_seconds(call, device, args.min_run_time)
        result[f"{mode}_ms"] = seconds * 1e3
        if flops is not None:
            factor = BWD_FLOP_FACTOR if grad else 1.0
            result[f"{mode}_tflops"] = factor * flops / seconds / 1e12
    notes = [f"{mode}: {result[f'{mode}_note']}" for mode, _ in modes if f"{mode}_note" in result]
    return {**result, "status": "; ".join(["ok", *notes])}


# ---- the driver ---------------------------------------------------------------------------


def available_methods(args) -> tuple[list[str], dict[str, str]]:
    """The requested methods that can run here, and a note for each one that cannot."""
    notes = {}
    if args.device != "cuda":
        notes["triton"] = "not measured: needs a CUDA device"
    else:
        try:
            from . import triton_kernels  # noqa: F401
        except ImportError as err:
            notes["triton"] = f"not measured: {err}"
    try:
        import transformers  # noqa: F401
    except ImportError:
        notes["hf_longformer"] = "not measured: transformers is not installed"
    return [m for m in args.methods if m not in notes], {
        m: notes[m] for m in args.methods if m in notes
    }


def run_one(args, method: str, n: int, pattern: str) -> dict:
    """Measure one configuration in a fresh Python process (or in this one)."""
    config = {**vars(args), "pattern": pattern}
    if args.in_process:
        return measure(argparse.Namespace(**config), method, n)
    worker = [sys.executable, "-m", "sparse_attn_edu.bench", "--worker", method, str(n)]
    proc = subprocess.run(
        worker + ["--config", json.dumps(config, default=str)],
        capture_output=True,
        text=True,
        timeout=args.timeout,
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"pattern": pattern, "n": n, "method": method, "status": f"failed: {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def versions() -> dict:
    found = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("triton", "transformers"):
        try:
            found[name] = __import__(name).__version__
        except ImportError:
            found[name] = None
    return found


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["results"] if r["status"].startswith("ok")]
    pattern_names = sorted({r["pattern"] for r in rows})
    metrics = [("fwd_ms", "forward time (ms)"), ("peak_fwd_mb", "forward peak extra memory (MiB)")]
    if any("fwd_bwd_ms" in r for r in rows):
        metrics.insert(1, ("fwd_bwd_ms", "forward + backward time (ms)"))
    fig, axes = plt.subplots(
        len(pattern_names),
        len(metrics),
        figsize=(5 * len(metrics), 4 * len(pattern_names)),
        squeeze=False,
    )
    for i, name in enumerate(pattern_names):
        for j, (key, label) in enumerate(metrics):
            ax = axes[i][j]
            for method in report["methods"]:
                points = sorted(
                    (r["n"], r[key])
                    for r in rows
                    if r["pattern"] == name and r["method"] == method and r.get(key)
                )
                if points:
                    ax.plot(*zip(*points, strict=True), marker="o", label=method)
            ax.set(xscale="log", yscale="log", xlabel="sequence length n", ylabel=label)
            ax.set_title(f"{name}: {label}")
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{report['device']} ({report['config']['dtype']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(report: dict, reference: str = "blocked") -> dict:
    """Per pattern: log-log slopes of `reference`, and how many times faster it is than each
    other method at each n (forward, and forward+backward when measured)."""
    out = {}
    for name in sorted({r["pattern"] for r in report["results"]}):
        ok = {
            (r["method"], r["n"]): r
            for r in report["results"]
            if r["pattern"] == name and r["status"].startswith("ok")
        }
        ref = sorted((n, r) for (m, n), r in ok.items() if m == reference)
        entry = {}
        for key in ("fwd_ms", "peak_fwd_mb", "fwd_bwd_ms"):
            points = [(n, r[key]) for n, r in ref if r.get(key, 0) > 0]
            if len(points) >= 2:
                entry[f"slope_{key}"] = slope(*zip(*points, strict=True))
        for key in ("fwd_ms", "fwd_bwd_ms", "peak_fwd_mb"):
            entry[f"speedup_{key}" if "ms" in key else f"memory_ratio_{key}"] = {
                m: {
                    n: ok[(m, n)][key] / r[key]
                    for n, r in ref
                    if (m, n) in ok and ok[(m, n)].get(key) and r.get(key)
                }
                for m in report["methods"]
                if m != reference
            }
        out[name] = entry
    return out


def markdown(report: dict) -> str:
    """One table per pattern: time, memory and TFLOP/s per method and n."""
    cfg = report["config"]
    lines = [
        f"Device: {report['device']}; torch {report['versions']['torch']}; "
        f"{cfg['dtype']}, B={cfg['batch']}, H={cfg['heads']}, D={cfg['head_dim']}; "
        f"{report['date']}",
        "",
        f"Load average before / after the run (1, 5, 15 min): {_load(report, 'before')} / "
        f"{_load(report, 'after')}",
        "",
        f"Host microseconds per tiny operation / per copy to the host, before / after: "
        f"{_host(report, 'before')} / {_host(report, 'after')}",
        "",
        f"Command: `{report['command']}`",
        "",
    ]
    for note_method, note in report["not_measured"].items():
        lines.append(f"- `{note_method}`: {note}")
    has_bwd = any("fwd_bwd_ms" in r for r in report["results"])
    for name in sorted({r["pattern"] for r in report["results"]}):
        lines += ["", f"**{name}**", ""]
        header = "| n | method | fwd ms | fwd peak MiB | fwd TFLOP/s |"
        header += " fwd+bwd ms | fwd+bwd peak MiB |" if has_bwd else ""
        header += " build s | warm-up s | status |"
        lines += [header, "|" + "---|" * (header.count("|") - 1)]
        for r in report["results"]:
            if r["pattern"] != name:
                continue
            cells = [r["n"], r["method"], r.get("fwd_ms"), r.get("peak_fwd_mb")]
            cells.append(r.get("fwd_tflops"))
            if has_bwd:
                cells += [r.get("fwd_bwd_ms"), r.get("peak_fwd_bwd_mb")]
            cells += [r.get("build_s"), r.get("warmup_fwd_s"), r["status"]]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        facts = report["summary"].get(name, {})
        slopes = [f"{k[6:]} {v:.2f}" for k, v in facts.items() if k.startswith("slope")]
        lines.append("")
        if slopes:  # blocked measured at two or more n
            lines.append("blocked: log-log slope " + ", ".join(slopes))
        for key, what in (
            ("speedup_fwd_ms", "times faster (fwd)"),
            ("speedup_fwd_bwd_ms", "times faster (fwd+bwd)"),
            ("memory_ratio_peak_fwd_mb", "x less peak memory (fwd)"),
        ):
            for method, by_n in facts.get(key, {}).items():
                if by_n:
                    cells = ", ".join(f"n={n}: {x:.2f}" for n, x in sorted(by_n.items()))
                    lines.append(f"- blocked vs {method}: {what} {cells}")
    return "\n".join(lines) + "\n"


def _load(report: dict, when: str) -> str:
    load = report.get("load_average", {}).get(when)
    return "unknown" if load is None else ", ".join(f"{x:.2f}" for x in load)


def _host(report: dict, when: str) -> str:
    host = report.get("host_us", {}).get(when)
    return "unknown" if host is None else f"{host['tiny_op_us']:.1f}, {host['copy_to_host_us']:.1f}"


def load_average() -> list[float] | None:
    """The machine's load average: other jobs on the same cores slow every method down."""
    try:
        return list(os.getloadavg())
    except OSError:  # not available on this platform
        return None


def host_microseconds(device: torch.device | str) -> dict:
    """The host's cost of one tiny operation on `device` and of one copy to the host with
    its wait, per call over 200 calls. Index builds are host time: their numbers follow
    these. Each is called once first: on a GPU, the first call of a kernel loads it (a
    one-time cost of milliseconds that would swell the average)."""
    device = torch.device(device)
    x = torch.zeros(1, device=device)

    def per_call(step, calls: int = 200) -> float:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return round((time.perf_counter() - start) / calls * 1e6, 2)

    return {"tiny_op_us": per_call(lambda: x.add_(1)), "copy_to_host_us": per_call(x.cpu)}


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if value < 100 else f"{value:.0f}"
    return str(value)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sparse_attn_edu.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument(
        "--patterns", nargs="+", choices=["longformer", "bigbird"], default=["longformer"]
    )
    parser.add_argument("--window", type=int, default=512, help="Longformer total width w")
    parser.add_argument(
        "--global-tokens", type=int, default=1, help="Longformer: the first G tokens are global"
    )
    parser.add_argument("--bigbird-block", type=int, default=64)
    parser.add_argument("--block-size", type=int, default=64, help="blocked/triton tile size")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--backward", action="store_true", help="also time forward+backward")
    parser.add_argument(
        "--min-run-time", type=float, default=1.0, help="seconds of repeated calls per timing (CPU)"
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds per configuration")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="measure in this process instead of one fresh process each",
    )
    parser.add_argument("--out", type=Path, default=Path("bench_results"))
    parser.add_argument("--name", help="file name stem of the outputs (default bench_DEVICE)")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: this PyTorch sees no CUDA device (use --device cpu)")
    return args


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    if args.worker:  # a child process: measure one configuration, print it as JSON
        method, n = args.worker
        config = argparse.Namespace(**json.loads(args.config))
        print(json.dumps(measure(config, method, int(n))))
        return None

    from tqdm import tqdm

    methods, not_measured = available_methods(args)
    configs = [(p, n, m) for p in args.patterns for n in args.seq_lens for m in methods]
    results = []
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / (args.name or f"bench_{args.device}")
    partial = stem.with_suffix(".partial.jsonl")
    partial.unlink(missing_ok=True)
    load_before, host_before = load_average(), host_microseconds(args.device)
    progress = tqdm(configs, unit="config")
    for pattern, n, method in progress:
        progress.set_description(f"{pattern} n={n} {method}")
        if method == "hf_longformer" and pattern != "longformer":
            continue  # Hugging Face's module implements the Longformer pattern only
        try:
            results.append(run_one(args, method, n, pattern))
        except subprocess.TimeoutExpired:
            status = f"skipped: over {args.timeout:.0f} s"
            results.append({"pattern": pattern, "n": n, "method": method, "status": status})
        with partial.open("a") as f:  # kept if a later configuration brings the run down
            f.write(json.dumps(results[-1]) + "\n")

    report = {
        "device": device_name(args.device),
        "versions": versions(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m sparse_attn_edu.bench "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "config": {k: v for k, v in vars(args).items() if k not in ("worker", "config")},
        "load_average": {"before": load_before, "after": load_average()},
        "host_us": {"before": host_before, "after": host_microseconds(args.device)},
        "methods": methods,
        "not_measured": not_measured,
        "results": results,
    }
    report["summary"] = summary(report)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    plot(report, stem.with_suffix(".png"))
    print(markdown(report))
    partial.unlink()
    print(f"wrote {stem}.json, .md and .png")
    return report


def slope(ns, values) -> float:
    """Least-squares slope of log(value) against log(n): 1 linear, 2 quadratic."""
    x = [math.log(n) for n in ns]
    y = [math.log(v) for v in values]
    mx, my = statistics.fmean(x), statistics.fmean(y)
    return sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sum(
        (a - mx) ** 2 for a in x
    )


if __name__ == "__main__":
    main()
