"""Smoke test of the benchmark CLI on tiny sizes: it runs and writes what it promises.

No timing is checked (tests never time anything); the report's structure, the skip rule
and the slope helper are.
"""

from __future__ import annotations

import json
import math
import time

import pytest

from sparse_attn_edu import bench


def test_cli_writes_json_markdown_and_plot(tmp_path):
    argv = [
        "--seq-lens", "32", "64", "--heads", "2", "--head-dim", "8", "--window", "8",
        "--block-size", "16", "--methods", "blocked", "masked", "sdpa_mask",
        "--min-run-time", "0.01", "--backward", "--in-process", "--out", str(tmp_path),
    ]  # fmt: skip
    report = bench.main(argv)
    stored = json.loads((tmp_path / "bench_cpu.json").read_text())
    assert stored["command"].startswith("python -m sparse_attn_edu.bench --seq-lens 32 64")
    assert stored["versions"]["torch"] and stored["date"] and stored["device"]
    rows = {(r["method"], r["n"]): r for r in stored["results"]}
    assert set(rows) == {(m, n) for m in ("blocked", "masked", "sdpa_mask") for n in (32, 64)}
    for r in rows.values():
        assert r["status"] == "ok", r
        for key in ("fwd_ms", "fwd_bwd_ms", "peak_fwd_mb", "build_s", "fwd_tflops"):
            assert r[key] >= 0, (key, r)
    # blocked computes fewer tiles than the n x n kernels: its TFLOP/s count less work.
    assert rows[("blocked", 64)]["fwd_tflops"] * rows[("blocked", 64)]["fwd_ms"] < (
        rows[("masked", 64)]["fwd_tflops"] * rows[("masked", 64)]["fwd_ms"]
    )
    assert "masked" in report["summary"]["longformer"]["speedup_fwd_ms"]
    assert (tmp_path / "bench_cpu.png").stat().st_size > 0
    assert "| 64 | blocked |" in (tmp_path / "bench_cpu.md").read_text()


def test_each_configuration_can_run_in_a_fresh_process(tmp_path):
    argv = ["--seq-lens", "32", "--heads", "1", "--head-dim", "4", "--window", "4",
            "--block-size", "8", "--methods", "blocked", "--min-run-time", "0.01",
            "--out", str(tmp_path)]  # fmt: skip
    (result,) = bench.main(argv)["results"]
    assert result["status"] == "ok" and result["fwd_ms"] > 0, result


def test_configurations_that_cannot_fit_are_skipped_with_a_note():
    args = bench.parse_args(["--heads", "16", "--batch", "64"])
    args.pattern = "longformer"
    result = bench.measure(args, "masked", 1 << 20)  # (64, 16, 2^20, 2^20) never fits
    assert result["status"].startswith("skipped: needs")


def test_slope_of_power_laws():
    ns = [1000, 2000, 4000]
    assert math.isclose(bench.slope(ns, [n**2 for n in ns]), 2.0)
    assert math.isclose(bench.slope(ns, [3 * n for n in ns]), 1.0)


def test_markdown_has_no_slope_line_without_the_blocked_stage(tmp_path):
    argv = ["--seq-lens", "32", "64", "--heads", "1", "--head-dim", "4", "--window", "4",
            "--methods", "sdpa_dense", "--min-run-time", "0.01", "--in-process",
            "--out", str(tmp_path)]  # fmt: skip
    report = bench.main(argv)
    text = (tmp_path / "bench_cpu.md").read_text()
    assert "log-log slope" not in text and "| 64 | sdpa_dense |" in text
    assert len(report["load_average"]["before"]) == 3  # the load the run was measured under
    # And the host's speed, before and after: index builds are host time.
    for when in ("before", "after"):
        assert report["host_us"][when]["tiny_op_us"] > 0, report["host_us"]
    assert "Host microseconds per tiny operation" in text


def test_host_microseconds_leave_out_the_first_call(monkeypatch):
    # The first call of an operation may load its kernel (milliseconds on a GPU); the
    # average is over the calls after it. A step that is slow only once shows that.
    calls = []

    class SlowOnce:
        def add_(self, _):
            calls.append(None)
            if len(calls) == 1:
                time.sleep(0.05)  # 50 ms, once: 250 us over 200 calls if it were counted

        def cpu(self):
            return self

    monkeypatch.setattr(bench.torch, "zeros", lambda *args, **kwargs: SlowOnce())
    costs = bench.host_microseconds("cpu")
    assert len(calls) == 201 and costs["tiny_op_us"] < 100, costs


def test_build_timing_makes_its_patterns_first(monkeypatch):
    # Making a pattern is not part of its build, and must not run just before one either
    # (scripts/build_after_draw.py: a BigBird draw slows the host code right after it).
    events = []
    monkeypatch.setattr(bench, "make_pattern", lambda args, n: events.append("make") or object())
    monkeypatch.setattr(bench, "build", lambda args, method, pattern: events.append("build"))
    args = bench.parse_args(["--device", "cpu"])
    assert bench.build_seconds(args, "triton", 64, repeats=3) >= 0
    assert events == ["make"] * 3 + ["build"] * 3


@pytest.mark.skipif(bench.torch.cuda.is_available(), reason="the error is for machines without")
def test_cuda_without_a_cuda_device_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--device", "cuda"])
    assert "sees no CUDA device" in capsys.readouterr().err
