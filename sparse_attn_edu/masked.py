"""Stage 2: masked dense attention -- the same n x n computation, restricted by a mask.

    Attention(Q, K, V, M) = softmax(Q K^T / sqrt(d) + log M) V,   log M = 0 or -inf

A mask says *which* pairs may interact (Longformer: Beltagy et al. 2020; BigBird: Zaheer
et al. 2020), but this stage still computes every score and throws most away: masking
alone saves nothing. Stage 3 skips the masked work instead.

A query row whose keys are all masked would give softmax(-inf, ..., -inf) = 0/0 = NaN.
We define its weights, output and gradients as zeros, as FlexAttention does.
"""

from __future__ import annotations

import torch

from ._checks import check_mask, check_pattern, check_qkv, default_scale, ensure_scores_fit
from .patterns import Pattern

SCORE_COPIES = 4  # scores, exp(scores), weights, and autograd's saved copy


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim of `scores` where `mask` is True; fully masked rows -> 0."""
    scores = scores.masked_fill(~mask, float("-inf"))
    # Subtracting the row max is for stability only (softmax is shift invariant), so it
    # carries no gradient. A fully masked row has max -inf: shift it by 0 instead.
    row_max = scores.amax(dim=-1, keepdim=True).detach()
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    unnormalized = torch.exp(scores - row_max)  # exp(-inf) = 0 on masked pairs
    total = unnormalized.sum(dim=-1, keepdim=True)
    # An empty row has total 0: dividing by `tiny` keeps 0 / tiny = 0 and no NaN gradient.
    return unnormalized / total.clamp_min(torch.finfo(scores.dtype).tiny)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | Pattern,
    scale: float | None = None,
    return_weights: bool = False,
):
    """Masked softmax attention for q, k, v of shape (batch, heads, seq_len, head_dim).

    `mask` is a bool tensor (n, n), (H, n, n) or (B, H, n, n) that broadcasts (True = query
    i may attend key j), or a Pattern. Returns the output shaped like q, and with
    ``return_weights=True`` also the weights (batch, heads, seq_len, seq_len).
    """
    batch, heads, seq_len, head_dim = check_qkv(q, k, v)
    scale = default_scale(head_dim, scale)
    # Check before a Pattern is materialized: its n x n mask is the first big allocation.
    ensure_scores_fit(batch, heads, seq_len, q.dtype, q.device, SCORE_COPIES)
    if isinstance(mask, Pattern):
        mask = check_pattern(mask, heads, seq_len).mask
    mask = check_mask(mask, batch, heads, seq_len).to(q.device)  # (B|1, H|1, N, N)

    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, N, N): every pair, allowed or not
    weights = masked_softmax(scores, mask)  # (B, H, N, N), zeros outside the mask
    out = weights @ v  # (B, H, N, D)
    return (out, weights) if return_weights else out
