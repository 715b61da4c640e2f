"""Stage 4's index build (two Triton kernels) against layout.py's PyTorch build.

layout.py's lists, kinds and tile masks are checked against the materialized mask in
test_layout.py; here the kernels must reproduce every one of them exactly, for every
pattern that is a union of parts. Without a CUDA device the kernels run in the Triton
interpreter on tiny shapes.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

# Imported before anything else imports triton: it switches on the interpreter without CUDA.
tk = pytest.importorskip("sparse_attn_edu.triton_kernels")

import triton  # noqa: E402

from sparse_attn_edu import patterns, triton_layout  # noqa: E402
from sparse_attn_edu.layout import build_layout  # noqa: E402
from sparse_attn_edu.patterns import FULL, PARTIAL  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
FIELDS = ("kinds", "row_count", "row_full_count", "row_index", "row_tile", "col_count",
          "col_full_count", "col_index", "col_tile", "tile_masks", "host_counts")  # fmt: skip


def build(pattern, block_size, device):
    """The kernels' layout (None: left to layout.py); work lists are tested with the planner."""
    built = triton_layout.build_from_parts(pattern, block_size, device, tk.MAX_TILES_PER_PROGRAM)
    return None if built is None else built[0]


def assert_same_layout(ours, reference, label):
    for name in FIELDS:
        a, b = getattr(ours, name).cpu(), getattr(reference, name).cpu()
        assert a.shape == b.shape and torch.equal(a, b), f"{label}: {name} differs"


def zoo(n: int, draw) -> list:
    window = draw(st.integers(1, max(1, n // 2))) * 2
    tokens = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=3))
    return [
        patterns.sliding_window(n, window),
        patterns.longformer(n, window, tokens),
        patterns.dilated_window(n, window, draw(st.integers(1, 3))),
        patterns.causal(n),
        patterns.dense(n),
        patterns.global_tokens(n, tokens),
        patterns.sliding_window(n, window) & patterns.causal(n),
        patterns.dilated_window(n, window, 2) | patterns.global_tokens(n, tokens),
    ]


# Few examples: in the interpreter each pattern costs about a second.
@settings(max_examples=6, deadline=None)
@given(n=st.integers(1, 40), block_size=st.sampled_from([2, 3, 5, 8, 12, 16]), data=st.data())
def test_kernels_build_the_same_layout(n, block_size, data):
    bigbird_heads = data.draw(st.sampled_from([None, 2]))
    nbb = math.ceil(n / block_size)
    seed = data.draw(st.integers(0, 9))
    bigbird = patterns.bigbird(
        n, block_size, 1, min(1, nbb), int(nbb >= 4), seed=seed, num_heads=bigbird_heads
    )
    for p in [*zoo(n, data.draw), bigbird, bigbird | patterns.sliding_window(n, 2)]:
        # Pieces of at most 2 tiles: lists get cut, so the work lists have merges too.
        built = triton_layout.build_from_parts(p, block_size, DEVICE, 2)
        assert built is not None, repr(p)
        reference = build_layout(p, block_size, DEVICE)
        assert_same_layout(built[0], reference, repr(p))
        # The work planned inside the lists kernel is the planner's on layout.py's counts.
        planned = triton_layout.plan_work(reference.host_counts, 2, DEVICE)
        for ours, theirs in zip(built[1:3], planned, strict=True):
            assert torch.equal(ours.items, theirs.items) and torch.equal(ours.merges, theirs.merges)
            assert ours.num_slots == theirs.num_slots


def test_unsure_tiles_are_tested_element_by_element():
    # Token 0 makes block 0 partly global, the window's edge tiles are partial too: where
    # both meet, only the elements can tell the kind.
    n, bs = 48, 8
    window, tokens = patterns.sliding_window(n, 10), patterns.global_tokens(n, [0, 20])
    both = (window.block_kinds(bs) == PARTIAL) & (tokens.block_kinds(bs) == PARTIAL)
    assert both.sum() > 0
    p = window | tokens
    assert_same_layout(build(p, bs, DEVICE), build_layout(p, bs), "unsure")


def test_patterns_without_parts_are_left_to_layout_py():
    n = 32
    mask = patterns.sliding_window(n, 4).mask
    assert build(patterns.as_pattern(mask), 8, DEVICE) is None
    # BigBird's blocks at another tile size cover several blocks (or part of one).
    assert build(patterns.bigbird(n, 4, 1, 1, 0), 8, DEVICE) is None


def test_kernel_layout_takes_the_triton_build(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("layout.py's build was called for a pattern with parts")

    monkeypatch.setattr(tk, "build_layout", refuse)
    p = patterns.longformer(70, 8, (0, 33))
    kl = tk.kernel_layout(p, 16, DEVICE)
    assert_same_layout(kl.layout, build_layout(p, 16), "kernel_layout")
    with pytest.raises(AssertionError, match="layout.py's build"):
        tk.kernel_layout(patterns.as_pattern(p.mask), 16, DEVICE)


def test_unsure_tile_that_two_parts_fill():
    # Tile (0, 0) at bs = 3: the window allows |i - j| <= 1, token 0 its row and column;
    # neither fills the tile, together they do: only the element test finds it full.
    window, token = patterns.sliding_window(9, 2), patterns.global_tokens(9, [0])
    assert window.block_kinds(3)[0, 0] == PARTIAL and token.block_kinds(3)[0, 0] == PARTIAL
    ours = build(window | token, 3, DEVICE)
    assert ours.kinds[0, 0, 0] == FULL
    assert_same_layout(ours, build_layout(window | token, 3), "filled by two parts")


@pytest.mark.parametrize(
    "pattern, block_size",
    [
        (patterns.sliding_window(1, 2), 1),
        (patterns.longformer(1, 2, (0,)), 4),
        (patterns.longformer(13, 4, (12,)), 1),  # block size 1, token at the last position
        (patterns.longformer(13, 4, (12,)), 5),  # ... and in a short last block
        (patterns.bigbird(5, 8, 1, 1, 0), 8),  # one short block
        (
            patterns.BlockPattern(20, 4, patterns.bigbird(20, 4, 3, 1, 1).layout.expand(3, -1, -1)),
            4,
        ),
        (patterns.BlockPattern(20, 4, patterns.bigbird(20, 4, 3, 1, 1).layout.mT), 4),
    ],
    ids=[
        "n1",
        "n1_bs4",
        "bs1_last_token",
        "short_last_block",
        "one_block",
        "expanded",
        "transposed",
    ],
)
def test_edge_cases(pattern, block_size):
    ours = build(pattern, block_size, DEVICE)
    assert_same_layout(ours, build_layout(pattern, block_size), repr(pattern))


def test_bigbird_goes_as_its_recipe_other_tables_as_bits(monkeypatch):
    # BigBird's table reaches the kernels as its recipe (band, global and random blocks),
    # the same table as a plain BlockPattern as bits: both give layout.py's layout.
    packed = []
    real_bits = triton_layout._block_bits
    monkeypatch.setattr(triton_layout, "_block_bits", lambda *a: packed.append(1) or real_bits(*a))
    for heads in (None, 3):
        bigbird = patterns.bigbird(60, 4, 3, 2, 2, seed=heads or 0, num_heads=heads)
        plain = patterns.BlockPattern(60, 4, bigbird.layout)
        reference = build_layout(plain, 4)
        assert_same_layout(build(bigbird, 4, DEVICE), reference, repr(bigbird))
        assert not packed, "the recipe, not the table"
        assert_same_layout(build(plain, 4, DEVICE), reference, "plain")
        assert packed.pop() and not packed


def test_a_huge_max_tiles_cuts_nothing():
    # No list is longer than nb: any max_tiles >= nb plans the same uncut work, with every
    # block a real one (a key of the planner's sort once overflowed int32 here).
    p = patterns.longformer(40, 4, (0,))
    plans = [triton_layout.build_from_parts(p, 8, DEVICE, m)[1:3] for m in (5, 10**9, 2**40)]
    for rows, cols in plans[1:]:
        assert torch.equal(rows.items, plans[0][0].items)
        assert torch.equal(cols.items, plans[0][1].items)
    assert ((plans[1][0].items[..., 0] >= 0) & (plans[1][0].items[..., 0] < 5)).all()
    assert (plans[1][0].items[..., 3] == -1).all() and plans[1][0].merges.shape[1] == 0
    with pytest.raises(ValueError, match="max_tiles"):
        triton_layout.build_from_parts(p, 8, DEVICE, 0)


def test_the_layout_keeps_no_scratch():
    # What a build keeps: the kinds, one int32 allocation holding the counts, the lists and
    # the work lists, and the masks; not the (H', nb, nb) int32 ranks of partial tiles.
    p = patterns.longformer(80, 14, (0, 1, 2)) | patterns.bigbird(80, 4, 3, 1, 1, num_heads=4)
    layout, rows, cols, masks = triton_layout.build_from_parts(p, 4, DEVICE, 2)
    kept = [getattr(layout, name) for name in FIELDS if name != "host_counts"]
    kept += [rows.items, rows.merges, cols.items, cols.merges, masks]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in kept}
    assert len(storages) == 3 and layout.tile_masks.numel() > 0
    assert storages[layout.kinds.untyped_storage().data_ptr()] == 4 * 20 * 20  # int8
    shared = layout.row_count.untyped_storage().data_ptr()
    assert all(t.untyped_storage().data_ptr() == shared for t in kept[1:9] + kept[10:14])


def room_needed(reference, max_tiles: int) -> tuple:
    """What the lists kernel writes for layout.py's layout `reference`: entries per list,
    partial tiles, and per group of lists the planner's pieces and cut lists."""
    lists = reference.host_counts[0::2]  # (2, H', nb): rows' and columns' entries
    pieces = (-(-lists // max_tiles)).clamp(min=1)
    return (max(int(lists.max()), 1), reference.tile_masks.shape[0],
            int(pieces.sum(-1).max()), int((pieces > 1).sum(-1).max()))  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), block_size=st.sampled_from([1, 2, 3, 5, 8, 16]),
       max_tiles=st.integers(1, 5), data=st.data())  # fmt: skip
def test_room_from_parts_holds_what_the_kernels_write(n, block_size, max_tiles, data):
    # The lists kernel runs before the host reads any count, into room bounded from the
    # parts alone. For every pattern whose offsets are one range the bounds hold (against
    # layout.py's layout), and with a global row the width is exactly nb.
    nb = math.ceil(n / block_size)
    max_tiles = min(max_tiles, nb)
    heads = data.draw(st.sampled_from([None, 3]))
    bigbird = patterns.bigbird(n, block_size, 3, min(1, nb), int(nb >= 5), num_heads=heads)
    window_only = patterns.bigbird(n, block_size, 3, 0, int(nb >= 5), num_heads=heads)
    cases = [p for p in zoo(n, data.draw) if p.parts().offsets is None or p.parts().offset_range]
    for p in [*cases, bigbird, window_only, window_only | patterns.sliding_window(n, 2)]:
        blocks = p.parts().blocks
        layout_heads = blocks.layout.shape[0] if blocks and blocks.layout.dim() == 3 else 1
        room = triton_layout._room_from_parts(p.parts(), n, block_size, layout_heads, max_tiles)
        needed = room_needed(build_layout(p, block_size), max_tiles)
        assert all(r >= need for r, need in zip(room, needed, strict=True)), (repr(p), room, needed)
        if p.parts().tokens or (p.parts().blocks and p.parts().blocks.recipe.global_blocks):
            assert room.width == nb


def test_a_pattern_that_needs_more_room_is_built_again(monkeypatch):
    # A dilated window's partial tiles get no room: its build runs both kernels twice, the
    # second time with the room the first one read back. Longformer's runs them once.
    classified = []
    real_launch = triton_layout._launch
    monkeypatch.setattr(triton_layout, "_launch", lambda kernel, *a, **k: (
        classified.append(1) if kernel is triton_layout._classify_kernel else None,
        real_launch(kernel, *a, **k)))  # fmt: skip
    for p, runs in ((patterns.dilated_window(40, 8, 2), 2), (patterns.longformer(40, 8, (3,)), 1)):
        assert_same_layout(build(p, 4, DEVICE), build_layout(p, 4), repr(p))
        assert len(classified) == runs, repr(p)
        classified.clear()


def test_offsets_read_as_a_range_or_as_a_prefix():
    # One range of offsets needs two numbers, others a prefix sum: both give layout.py's.
    n, bs = 45, 8
    window, causal = patterns.sliding_window(n, 10), patterns.causal(n)
    past = patterns.OffsetPattern(n, lambda d: d <= -5, "past", (-(n - 1), -5))
    cases = [window & causal, past & causal, patterns.dilated_window(n, 6, 3) | causal]
    assert [p.parts().offset_range for p in cases] == [(0, 5), (0, -5), None]
    for p in cases:
        assert_same_layout(build(p, bs, DEVICE), build_layout(p, bs), repr(p))


def test_global_tokens_read_as_a_run_or_as_a_list():
    # Consecutive tokens (Longformer's first ones) are read as a run, others searched in
    # the sorted list: both give layout.py's layout, partly global blocks included.
    n, bs = 50, 8
    for tokens in (range(5, 12), range(0, 16), (3, 9, 10), (20,)):
        p = patterns.longformer(n, 6, tokens)
        assert_same_layout(build(p, bs, DEVICE), build_layout(p, bs), repr(p))


class FakeKernel:
    """Stands in for a compiled-mode JITFunction: records launches through Triton's path
    and hands back a fake compiled kernel that records direct launches."""

    def __init__(self, runtime: int, constexprs: tuple[str, ...], specialized: bool = False):
        def param(name, is_constexpr):
            unspecialized = not is_constexpr and not specialized
            return SimpleNamespace(name=name, is_constexpr=is_constexpr,
                                   do_not_specialize=unspecialized,
                                   do_not_specialize_on_alignment=unspecialized)  # fmt: skip

        self.params = [param(f"a{i}", False) for i in range(runtime)]
        self.params += [param(name, True) for name in constexprs]
        self.through_triton, self.direct = [], []

    def __getitem__(self, grid):
        def launch(*args, **constexprs):  # Triton's path: returns the compiled kernel
            self.through_triton.append((grid, args, constexprs))
            return FakeCompiled(self)

        return launch


class FakeCompiled:
    """A compiled kernel: its own launch records into kernel.direct; with `c_launcher`, a
    `run` like Triton's CudaLauncher whose C `launch` records into kernel.c_launched."""

    def __init__(self, kernel: FakeKernel, c_launcher: bool = False):
        self.kernel = kernel
        self.function, self.packed_metadata = "function", "metadata"
        if c_launcher:
            kernel.c_launched = []
            self.run = SimpleNamespace(
                global_scratch_size=0, profile_scratch_size=0, launch_cooperative_grid=False,
                launch_pdl=False, launch=lambda *args: kernel.c_launched.append(args),
            )  # fmt: skip

    def __getitem__(self, grid):
        return lambda *args: self.kernel.direct.append((grid, args))


def test_launch_goes_straight_to_the_compiled_kernel_after_the_first(monkeypatch):
    """triton_layout._launch, the GPU path, with Triton faked: the first launch of each
    constexpr set goes through kernel[grid], later ones straight to the compiled kernel it
    returned, with the constexprs appended in parameter order."""
    monkeypatch.setattr(tk, "INTERPRETED", False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(triton_layout, "_LAUNCHERS", {})
    kernel = FakeKernel(runtime=2, constexprs=("B", "A"))
    x = torch.zeros(3, dtype=torch.int32)

    triton_layout._launch(kernel, (4, 1, 2), x, 7, A=1, B=2)
    triton_layout._launch(kernel, (5, 1, 2), x, 8, A=1, B=2)  # same flags
    assert kernel.through_triton == [((4, 1, 2), (x, 7), {"A": 1, "B": 2})]
    assert kernel.direct == [((5, 1, 2), (x, 8, 2, 1))]  # B, A: the parameters' order

    triton_layout._launch(kernel, (5, 1, 2), x, 8, A=1, B=3)  # other constexprs
    assert len(kernel.through_triton) == 2 and len(kernel.direct) == 1

    specialized = FakeKernel(runtime=2, constexprs=("A",), specialized=True)
    with pytest.raises(AssertionError):  # its compiled form would not serve every call
        triton_layout._launch(specialized, (1,), x, 7, A=1)


def test_launch_calls_the_c_launcher_unless_a_hook_listens(monkeypatch):
    # Where the compiled kernel's launcher is Triton's CudaLauncher (no scratch memory),
    # later launches call its C launch with the current stream; with a launch hook set
    # (a profiler), the compiled kernel's own launch, which calls it.
    monkeypatch.setattr(tk, "INTERPRETED", False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda device: 77, raising=False)
    monkeypatch.setattr(triton_layout, "_LAUNCHERS", {})
    kernel = FakeKernel(runtime=2, constexprs=("A",))
    compiled = FakeCompiled(kernel, c_launcher=True)
    monkeypatch.setattr(FakeKernel, "__getitem__", lambda self, grid: lambda *a, **k: compiled)
    x = torch.zeros(3, dtype=torch.int32)
    triton_layout._launch(kernel, (1, 1, 1), x, 7, A=5)  # compiles
    triton_layout._launch(kernel, (3, 2, 1), x, 8, A=5)
    assert kernel.c_launched == [
        (3, 2, 1, 77, "function", False, False, None, None, "metadata", None, None, None, x, 8, 5)
    ]
    monkeypatch.setattr(triton.knobs.runtime, "launch_enter_hook", lambda metadata: None)
    triton_layout._launch(kernel, (4, 1, 1), x, 9, A=5)
    assert kernel.direct == [((4, 1, 1), (x, 9, 5))] and len(kernel.c_launched) == 1
