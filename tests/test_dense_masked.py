"""Stages 1 and 2 against independent references: torch SDPA and FlexAttention (eager, CPU).

SDPA leaves a fully masked row undefined (NaN), while our contract makes it zeros with zero
gradients. The reference therefore lets such rows attend everything and multiplies their
output by zero afterwards: same values and gradients as the contract, from SDPA alone.
Attention weights come from SDPA too, by attending values v = identity (out = weights @ I).
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from sparse_attn_edu import _checks, dense, masked, patterns

SETTINGS = settings(max_examples=25, deadline=None)
TOL = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.float64: dict(atol=1e-10, rtol=1e-9)}


# ---- references ---------------------------------------------------------------------


def sdpa_reference(q, k, v, mask=None, scale=None):
    """SDPA output and weights; rows without any allowed key give zeros."""
    b, h, n, _ = q.shape
    eye = torch.eye(n, dtype=q.dtype).expand(b, h, n, n)
    if mask is None:
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        weights = F.scaled_dot_product_attention(q, k, eye, scale=scale)
        return out, weights
    has_key = mask.any(-1, keepdim=True)  # (..., n, 1)
    filled = mask | ~has_key  # empty rows attend everything, then are zeroed
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=filled, scale=scale) * has_key
    weights = F.scaled_dot_product_attention(q, k, eye, attn_mask=filled, scale=scale) * has_key
    return out, weights


def random_qkv(shape, dtype, seed, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(shape, generator=g, dtype=dtype).requires_grad_(requires_grad) for _ in range(3)
    ]


# ---- strategies ---------------------------------------------------------------------


@st.composite
def problems(draw, max_n: int = 12, tensor_forms=("nn", "hnn", "bhnn", "1hnn", "b1nn")):
    """(q, k, v, mask-or-pattern, reference bool mask broadcastable to (B, H, n, n), scale)."""
    b, h = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    n, d = draw(st.integers(1, max_n)), draw(st.integers(1, 8))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    seed = draw(st.integers(0, 2**16))
    q, k, v = random_qkv((b, h, n, d), dtype, seed)
    scale = draw(st.sampled_from([None, 0.3]))
    form = draw(st.sampled_from(tensor_forms + ("pattern",)))
    if form == "pattern":
        window = 2 * draw(st.integers(1, n))
        block = draw(st.integers(1, 4))
        pattern = draw(
            st.sampled_from(
                [
                    patterns.sliding_window(n, window),
                    patterns.longformer(n, window, (n - 1,)),
                    patterns.causal(n),
                    patterns.dilated_window(n, window, 2) & patterns.causal(n),
                    patterns.bigbird(n, block, 1, 0, 0, num_heads=h),
                ]
            )
        )
        return q, k, v, pattern, pattern.mask, scale
    shape = {
        "nn": (n, n),
        "hnn": (h, n, n),
        "bhnn": (b, h, n, n),
        "1hnn": (1, h, n, n),
        "b1nn": (b, 1, n, n),
    }[form]
    density = draw(st.sampled_from([0.1, 0.5, 0.9]))
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(seed + 1)) < density
    return q, k, v, mask, mask, scale


# ---- stage 1 ------------------------------------------------------------------------


@SETTINGS
@given(
    b=st.integers(1, 2),
    h=st.integers(1, 3),
    n=st.integers(1, 16),
    d=st.integers(1, 8),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    scale=st.sampled_from([None, 0.25]),
)
def test_dense_equals_sdpa(b, h, n, d, dtype, scale):
    q, k, v = random_qkv((b, h, n, d), dtype, seed=n * 31 + d)
    out, weights = dense.attention(q, k, v, scale=scale, return_weights=True)
    ref_out, ref_weights = sdpa_reference(q, k, v, scale=scale)
    assert out.shape == q.shape and weights.shape == (b, h, n, n)
    torch.testing.assert_close(out, ref_out, **TOL[dtype])
    torch.testing.assert_close(weights, ref_weights, **TOL[dtype])
    torch.testing.assert_close(dense.attention(q, k, v, scale=scale), out, rtol=0, atol=0)


def test_dense_gradients_match_sdpa():
    q, k, v = random_qkv((2, 2, 7, 5), torch.float64, seed=0, requires_grad=True)
    grad_out = torch.randn(2, 2, 7, 5, dtype=torch.float64)
    ours = torch.autograd.grad(dense.attention(q, k, v), (q, k, v), grad_out)
    ref = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v), (q, k, v), grad_out)
    for a, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, r, **TOL[torch.float64])
    small = random_qkv((1, 2, 4, 3), torch.float64, seed=1, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v: dense.attention(q, k, v), small)


# ---- stage 2 against SDPA -----------------------------------------------------------


@SETTINGS
@given(problem=problems())
def test_masked_equals_sdpa(problem):
    q, k, v, mask, ref_mask, scale = problem
    out, weights = masked.attention(q, k, v, mask, scale=scale, return_weights=True)
    ref_out, ref_weights = sdpa_reference(q, k, v, ref_mask, scale)
    assert out.shape == q.shape and weights.shape == q.shape[:2] + (q.shape[2],) * 2
    torch.testing.assert_close(out, ref_out, **TOL[q.dtype])
    torch.testing.assert_close(weights, ref_weights, **TOL[q.dtype])
    assert not out.isnan().any() and not weights.isnan().any()


@settings(max_examples=15, deadline=None)
@given(problem=problems(max_n=8))
def test_masked_gradients_match_sdpa(problem):
    q, k, v, mask, ref_mask, scale = problem
    q, k, v = (t.double().requires_grad_() for t in (q, k, v))
    grad_out = torch.randn(q.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    ours = torch.autograd.grad(masked.attention(q, k, v, mask, scale=scale), (q, k, v), grad_out)
    ref_out, _ = sdpa_reference(q, k, v, ref_mask, scale)
    ref = torch.autograd.grad(ref_out, (q, k, v), grad_out)
    for a, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, r, **TOL[torch.float64])
        assert not a.isnan().any()


def test_masked_gradcheck_with_an_empty_row():
    mask = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 0, 0]], dtype=torch.bool)
    qkv = random_qkv((1, 2, 4, 3), torch.float64, seed=2, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v: masked.attention(q, k, v, mask), qkv)


def test_fully_masked_rows_are_zero_without_nan():
    n = 6
    mask = patterns.causal(n).mask.clone()
    mask[2] = False  # query 2 may attend nothing
    mask[:, 5] = False
    mask[5] = False  # so is query 5
    q, k, v = random_qkv((2, 3, n, 4), torch.float32, seed=3, requires_grad=True)
    out, weights = masked.attention(q, k, v, mask, return_weights=True)
    assert torch.equal(out[:, :, [2, 5]], torch.zeros(2, 3, 2, 4))
    assert torch.equal(weights[:, :, [2, 5]], torch.zeros(2, 3, 2, n))
    out.sum().backward()
    assert torch.equal(q.grad[:, :, [2, 5]], torch.zeros(2, 3, 2, 4)), "no gradient into q"
    assert torch.equal(k.grad[:, :, 5], torch.zeros(2, 3, 4)), "key 5 is never attended"
    for t in (out, weights, q.grad, k.grad, v.grad):
        assert not t.isnan().any()
    # every row empty: all zeros, still no NaN
    nothing = torch.zeros(n, n, dtype=torch.bool)
    q2, k2, v2 = random_qkv((1, 1, n, 4), torch.float32, seed=4, requires_grad=True)
    out2 = masked.attention(q2, k2, v2, nothing)
    out2.sum().backward()
    assert torch.equal(out2, torch.zeros_like(out2))
    assert all(torch.equal(t.grad, torch.zeros_like(t)) for t in (q2, k2, v2))


def test_all_true_mask_is_dense():
    q, k, v = random_qkv((2, 2, 9, 4), torch.float64, seed=5)
    torch.testing.assert_close(
        masked.attention(q, k, v, patterns.dense(9)), dense.attention(q, k, v), rtol=0, atol=1e-14
    )


# ---- stage 2 against FlexAttention --------------------------------------------------


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@settings(max_examples=12, deadline=None)
@given(
    b=st.integers(1, 2),
    h=st.integers(1, 2),
    n=st.integers(1, 16),
    d=st.sampled_from([4, 8]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    data=st.data(),
)
def test_masked_equals_flex_attention(b, h, n, d, dtype, data):
    window = 2 * data.draw(st.integers(1, n))
    seed = data.draw(st.integers(0, 1000))
    empty_rows = torch.rand(h, n, n, generator=torch.Generator().manual_seed(seed)) < 0.15
    pattern = data.draw(
        st.sampled_from(
            [
                patterns.longformer(n, window, (0,)),
                patterns.sliding_window(n, window) & patterns.causal(n),
                patterns.bigbird(n, 4, 1, 1, 0, seed=seed, num_heads=h),
                patterns.as_pattern(empty_rows),  # sparse enough to leave rows empty
            ]
        )
    )
    q, k, v = random_qkv((b, h, n, d), dtype, seed)
    heads = None if pattern.num_heads is None else h
    block_mask = create_block_mask(pattern.to_mask_mod(), None, heads, n, n, device="cpu")
    expected = flex_attention(q, k, v, block_mask=block_mask)
    torch.testing.assert_close(masked.attention(q, k, v, pattern), expected, **TOL[dtype])


# ---- shapes and errors --------------------------------------------------------------


def test_return_weights_shapes():
    q, k, v = random_qkv((2, 3, 5, 4), torch.float32, seed=6)
    out, weights = dense.attention(q, k, v, return_weights=True)
    assert out.shape == (2, 3, 5, 4) and weights.shape == (2, 3, 5, 5)
    out, weights = masked.attention(q, k, v, patterns.causal(5), return_weights=True)
    assert out.shape == (2, 3, 5, 4) and weights.shape == (2, 3, 5, 5)
    assert isinstance(masked.attention(q, k, v, patterns.causal(5)), torch.Tensor)


@pytest.mark.parametrize("stage", ["dense", "masked"])
def test_bad_qkv_shapes(stage):
    good = torch.randn(1, 2, 5, 4)
    run = {
        "dense": lambda q, k, v: dense.attention(q, k, v),
        "masked": lambda q, k, v: masked.attention(q, k, v, torch.ones(5, 5, dtype=torch.bool)),
    }[stage]
    expected = re.escape("(batch, heads, seq_len, head_dim)")
    with pytest.raises(ValueError, match=rf"expected q of shape {expected}, got \(5, 4\)"):
        run(torch.randn(5, 4), good, good)
    with pytest.raises(ValueError, match=rf"expected q, k, v of the same shape {expected}"):
        run(good, torch.randn(1, 2, 6, 4), good)
    with pytest.raises(ValueError, match=r"v \(1, 2, 5, 3\)"):
        run(good, good, torch.randn(1, 2, 5, 3))


def test_bad_masks():
    q = k = v = torch.randn(2, 3, 5, 4)
    with pytest.raises(TypeError, match="expected a bool mask.*got dtype torch.float32"):
        masked.attention(q, k, v, torch.ones(5, 5))
    with pytest.raises(ValueError, match=r"with n = 5, got \(4, 4\)"):
        masked.attention(q, k, v, torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"broadcasts to \(B=2, H=3, 5, 5\), got \(2, 5, 5\)"):
        masked.attention(q, k, v, torch.ones(2, 5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"broadcasts to \(B=2, H=3, 5, 5\), got \(3, 3, 5, 5\)"):
        masked.attention(q, k, v, torch.ones(3, 3, 5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="expected a pattern with seq_len 5, got 6"):
        masked.attention(q, k, v, patterns.causal(6))


def _gib_in(message: str) -> float:
    return float(re.search(r"needs about ([\d.]+) GiB", message).group(1))


def test_memory_guard_reports_the_estimate_instead_of_allocating():
    # expand() gives a (1, 16, 2^20, 64) view of one number: nothing n x n is ever allocated
    n = 2**20
    q = torch.zeros(1, 1, 1, 1).expand(1, 16, n, 64)
    one_score_matrix_gib = 16 * n * n * 4 / 2**30  # float32 (B, H, n, n)
    with pytest.raises(MemoryError, match=f"seq_len={n}") as err:
        dense.attention(q, q, q)
    assert _gib_in(str(err.value)) >= one_score_matrix_gib
    mask = torch.ones(1, 1, dtype=torch.bool).expand(n, n)
    with pytest.raises(MemoryError, match="GiB is available") as err:
        masked.attention(q, q, q, mask)
    assert _gib_in(str(err.value)) >= one_score_matrix_gib
    with pytest.raises(MemoryError, match=f"seq_len={n}"):  # before p.mask would be built
        masked.attention(q, q, q, patterns.sliding_window(n, 4))


def test_memory_guard_uses_available_memory(monkeypatch):
    q = torch.randn(1, 1, 64, 8)
    monkeypatch.setattr(_checks, "available_bytes", lambda device: 1000)
    # 64 x 64 float32 scores = 16 KiB > 1000 bytes "available"
    with pytest.raises(MemoryError, match=r"0\.0 GiB is available on cpu"):
        dense.attention(q, q, q)
    monkeypatch.setattr(_checks, "available_bytes", lambda device: 2**30)
    assert dense.attention(q, q, q).shape == q.shape
