"""Stage 4 (fused Triton kernels) against stage 2 (masked dense attention).

Every expected value comes from ``masked.attention`` in float64, an n x n computation that
shares no code with the kernels. Without a CUDA device the kernels run in the Triton
interpreter on CPU, so shapes are tiny; with one, the same tests run on larger shapes.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

# Imported before anything else imports triton: it switches on the interpreter without CUDA.
tk = pytest.importorskip("sparse_attn_edu.triton_kernels")

from sparse_attn_edu import masked, patterns, triton_layout  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
# Max abs error allowed, per dtype, on outputs and gradients of O(1) size.
TOLERANCE = {torch.float32: 2e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def size(cpu: int, gpu: int) -> int:
    """A tiny size in the interpreter, a larger one on a GPU."""
    return gpu if CUDA else cpu


def compare(pattern, batch, heads, seq_len, head_dim, dtype, block_size, scale=None):
    """Run both stages on the same random inputs; return (ours, reference) outputs + grads."""
    gen = torch.Generator().manual_seed(seq_len * 31 + head_dim)
    q, k, v, dout = (torch.randn(batch, heads, seq_len, head_dim, generator=gen) for _ in range(4))
    ours_in = [t.to(DEVICE, dtype).requires_grad_() for t in (q, k, v)]
    out = tk.attention(*ours_in, pattern, block_size=block_size, scale=scale)
    grads = torch.autograd.grad(out, ours_in, dout.to(DEVICE, dtype))

    ref_in = [t.to(DEVICE, dtype).double().requires_grad_() for t in (q, k, v)]
    mask = pattern if isinstance(pattern, torch.Tensor) else pattern.mask
    ref = masked.attention(*ref_in, mask.to(DEVICE), scale=scale)
    ref_grads = torch.autograd.grad(ref, ref_in, dout.to(DEVICE, dtype).double())
    return (out, *grads), (ref, *ref_grads)


def assert_close(ours, reference, dtype):
    names = ("out", "dq", "dk", "dv")
    for name, a, b in zip(names, ours, reference, strict=True):
        assert a.shape == b.shape and a.dtype == dtype, (name, a.shape, a.dtype)
        assert torch.isfinite(a).all(), f"{name} has NaN or inf"
        error = (a.double() - b).abs().max().item()
        assert error <= TOLERANCE[dtype], f"{name}: max abs error {error:.2e} ({dtype})"


CASES = [
    # (name, pattern factory(n), n (cpu, gpu), block_size, dtype, head_dim, heads)
    ("longformer_tail", lambda n: patterns.longformer(n, 8, (0, n // 2)), (45, 1001), 16,
     torch.float32, 16, 2),
    ("bigbird_per_head", lambda n: patterns.bigbird(n, 16, 3, 1, 1, seed=3, num_heads=2),
     (70, 999), 32, torch.float16, 32, 2),
    ("dilated_padded_dim", lambda n: patterns.dilated_window(n, 6, 2), (33, 517), 16,
     torch.bfloat16, 24, 1),
    ("causal_block64", lambda n: patterns.causal(n), (64, 640), 64, torch.float32, 16, 1),
    ("window_or_globals_fp16", lambda n: patterns.sliding_window(n, 10)
     | patterns.global_tokens(n, [n - 1]), (40, 700), 32, torch.float16, 64, 1),
    # 20 fp16 values are 40 bytes a row: not 16-byte aligned, so never tensor descriptors.
    ("unaligned_rows_fp16", lambda n: patterns.sliding_window(n, 12), (30, 500), 16,
     torch.float16, 20, 1),
]  # fmt: skip


@pytest.mark.parametrize("tma", [True, False], ids=["tma", "pointers"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_masked_attention(monkeypatch, case, tma):
    # Both ways of loading tiles: tensor descriptors (where the GPU has TMA) and pointers.
    monkeypatch.setattr(tk, "USE_TMA", tma)
    monkeypatch.setattr(tk, "TMA_MIN_PAIRS", 0)  # descriptors even for these tiny calls
    _, factory, sizes, block_size, dtype, head_dim, heads = case
    n = size(*sizes)
    pattern = factory(n)
    assert_close(*compare(pattern, 1, heads, n, head_dim, dtype, block_size), dtype)


def test_tma_only_for_big_calls_and_aligned_rows():
    aligned = torch.zeros(1, 1, 8, 24, dtype=torch.bfloat16, device=DEVICE)  # 48-byte rows
    unaligned = torch.zeros(1, 1, 8, 20, dtype=torch.float16, device=DEVICE)  # 40-byte rows
    big = tk.TMA_MIN_PAIRS
    hopper = not CUDA or torch.cuda.get_device_capability() >= (9, 0)
    assert tk._uses_tma((aligned,), big) == hopper
    assert not tk._uses_tma((aligned,), big - 1)  # too small to pay for the descriptors
    assert not tk._uses_tma((unaligned,), big)
    shifted = aligned.flatten()[1:169].view(1, 1, 7, 24)  # base 2 bytes past an aligned one
    assert not tk._uses_tma((shifted,), big)


def test_pairs_per_head_counts_computed_tiles():
    pattern = patterns.bigbird(256, 32, 3, 1, 2, seed=0, num_heads=2)
    kl = tk.kernel_layout(pattern, 32, DEVICE)
    tiles = int(pattern.block_layout(32).sum())  # over both heads
    assert kl.pairs_per_head == tiles * 32**2 // 2


def test_bool_mask_per_head_batch_and_scale():
    n, heads = size(37, 400), 2
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(heads, n, n, generator=gen) < 0.3  # random per-head tensor mask
    assert_close(*compare(mask, 2, heads, n, 16, torch.float32, 16, scale=0.3), torch.float32)


def test_fully_masked_rows_and_columns_give_zeros():
    n = size(40, 300)
    mask = patterns.sliding_window(n, 6).mask
    dead_rows, dead_cols = [0, 5, n - 1], [7, 8]
    mask[dead_rows] = False  # queries that may attend nothing
    mask[:, dead_cols] = False  # keys nobody attends
    ours, reference = compare(mask, 1, 1, n, 16, torch.float32, 16)
    assert_close(ours, reference, torch.float32)
    out, dq, dk, dv = ours
    assert (out[..., dead_rows, :] == 0).all() and (dq[..., dead_rows, :] == 0).all()
    assert (dk[..., dead_cols, :] == 0).all() and (dv[..., dead_cols, :] == 0).all()


@settings(max_examples=4, deadline=None)
@given(
    n=st.integers(17, 56),
    half=st.integers(1, 12),
    block_size=st.sampled_from([16, 32]),
    seed=st.integers(0, 10),
)
def test_random_window_and_globals(n, half, block_size, seed):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randperm(n, generator=gen)[: seed % 3].tolist()
    pattern = patterns.longformer(n, 2 * half, tokens)
    assert_close(*compare(pattern, 1, 1, n, 16, torch.float32, block_size), torch.float32)


def test_work_lists_cover_every_entry_once_longest_first():
    pattern = patterns.bigbird(256, 32, 3, 1, 2, seed=0, num_heads=2)
    kl = tk.kernel_layout(pattern, 32, DEVICE, max_tiles=3)
    for work, count in ((kl.rows, kl.layout.row_count), (kl.cols, kl.layout.col_count)):
        for head in range(2):
            items = {tuple(item) for item in work.items[head].tolist()}  # padding repeats
            covered = sorted((b, j) for b, start, stop, *_ in items for j in range(start, stop))
            full = kl.layout.row_full_count if work is kl.rows else kl.layout.col_full_count
            for b, start, stop, _, mid in items:  # full tiles in [start, mid)
                assert mid == min(max(int(full[head, b]), start), stop)
            expected = [(b, j) for b in range(8) for j in range(int(count[head, b]))]
            assert covered == expected
            lengths = (work.items[head, :, 2] - work.items[head, :, 1]).tolist()
            assert lengths == sorted(lengths, reverse=True)
            assert max(lengths) <= 3


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"dtype": torch.float64}, TypeError, "float16, bfloat16 or float32"),
        ({"block_size": 48}, ValueError, "block_size 16, 32, 64 or 128"),
        ({"seq_len": 31}, ValueError, "seq_len 32"),
        ({"head_dim": 160}, ValueError, "head_dim <= 128"),
        ({"pattern_heads": 3}, ValueError, "with 2 heads"),
    ],
)
def test_errors_say_what_was_expected(kwargs, error, message):
    dtype = kwargs.get("dtype", torch.float32)
    head_dim = kwargs.get("head_dim", 16)
    q = torch.zeros(1, 2, 32, head_dim, dtype=dtype, device=DEVICE)
    pattern = patterns.bigbird(kwargs.get("seq_len", 32), 16, 1, 0, 0, num_heads=2)
    if "pattern_heads" in kwargs:
        pattern = patterns.bigbird(32, 16, 1, 0, 0, num_heads=kwargs["pattern_heads"])
    with pytest.raises(error, match=message):
        tk.attention(q, q, q, pattern, block_size=kwargs.get("block_size", 16))


def test_package_import_does_not_need_triton():
    code = "import sys, sparse_attn_edu; assert 'triton' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "pattern",
    [
        patterns.longformer(size(40, 900), 8, (1, 20)),
        patterns.bigbird(size(40, 900), 16, 1, 1, 1, seed=1, num_heads=2),
    ],
    ids=["longformer", "bigbird_per_head"],
)
def test_long_lists_cut_in_pieces_and_merged(monkeypatch, pattern):
    # One tile per program: every list longer than one tile is split, then merged.
    monkeypatch.setattr(tk, "MAX_TILES_PER_PROGRAM", 1)
    n = pattern.seq_len
    ours, reference = compare(pattern, 1, 2, n, 16, torch.float32, 16)
    assert_close(ours, reference, torch.float32)
    assert tk.kernel_layout(pattern, 16, DEVICE, 1).rows.merges.shape[1] > 0  # really split


def plan_by_loops(count, full_count, max_tiles):
    """Items (a set), merges and scratch slots of each group, one list at a time."""
    plans = []
    for counts, fulls in zip(count.tolist(), full_count.tolist(), strict=True):
        items, merges, slot = set(), [], 0
        for block, (c, f) in enumerate(zip(counts, fulls, strict=True)):
            pieces = max(-(-c // max_tiles), 1)
            if pieces > 1:
                merges.append([block, slot, pieces])
            for k in range(pieces):
                start, stop = k * max_tiles, min(k * max_tiles + max_tiles, c)
                items.add(
                    (block, start, stop, slot + k if pieces > 1 else -1, min(max(f, start), stop))
                )
            slot += pieces if pieces > 1 else 0
        plans.append((items, merges, max(slot, 1)))
    return plans


@settings(max_examples=30, deadline=None)
@given(
    heads=st.integers(1, 2),
    nb=st.integers(1, 12),
    max_tiles=st.integers(1, 4),
    data=st.data(),
)
def test_work_plan_against_loops(heads, nb, max_tiles, data):
    # The planner kernel (triton_layout._plan_lists) on counts drawn at random: rows and
    # columns of each head are groups of lists, planned separately.
    lists = st.lists(st.integers(0, nb), min_size=nb, max_size=nb)  # a list has <= nb entries
    count = np.array(data.draw(st.lists(lists, min_size=2 * heads, max_size=2 * heads)))
    full_count = np.array([[data.draw(st.integers(0, c)) for c in row] for row in count])
    host_counts = torch.from_numpy(np.stack([count[:heads], full_count[:heads],
                                             count[heads:], full_count[heads:]]))  # fmt: skip
    rows, cols = triton_layout.plan_work(host_counts.int(), max_tiles, DEVICE)
    reference = plan_by_loops(count, full_count, max_tiles)
    for g, (ref_items, ref_merges, ref_slots) in enumerate(reference):
        work = rows if g < heads else cols
        items, merges = work.items[g % heads].cpu(), work.merges[g % heads].cpu()
        size = len(ref_items)
        assert {tuple(i) for i in items[:size].tolist()} == ref_items
        assert len(set(map(tuple, items[:size].tolist()))) == size  # each item once
        lengths = (items[:, 2] - items[:, 1]).tolist()
        assert lengths == sorted(lengths, reverse=True)  # longest first
        assert (items[size:] == items[size - 1]).all()  # padding repeats the last
        assert merges[: len(ref_merges)].tolist() == ref_merges
        assert (merges[len(ref_merges) :] == torch.tensor([-1, 0, 0])).all()  # does nothing
        assert work.num_slots >= ref_slots
    for work, half in ((rows, slice(0, heads)), (cols, slice(heads, 2 * heads))):
        assert work.num_slots == max(r[2] for r in reference[half])


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs, one current")
def test_launches_on_the_gpu_of_its_tensors():
    # Triton launches on the current CUDA device. With the tensors on cuda:1 and cuda:0
    # current, the build and the kernels, forward and backward, must still run on cuda:1.
    n, gen = 300, torch.Generator().manual_seed(0)
    q, k, v, dout = (torch.randn(1, 2, n, 32, generator=gen) for _ in range(4))
    pattern = patterns.longformer(n, 16, (0, 1))  # fresh: its layout is built here too
    with torch.cuda.device(0):
        ours_in = [t.to("cuda:1").requires_grad_() for t in (q, k, v)]
        out = tk.attention(*ours_in, pattern, block_size=32)
        grads = torch.autograd.grad(out, ours_in, dout.to("cuda:1"))
    ref_in = [t.double().requires_grad_() for t in (q, k, v)]
    ref = masked.attention(*ref_in, pattern.mask)
    ref_grads = torch.autograd.grad(ref, ref_in, dout.double())
    assert out.device == torch.device("cuda:1")
    assert_close([t.cpu() for t in (out, *grads)], (ref, *ref_grads), torch.float32)
