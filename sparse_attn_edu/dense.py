"""Stage 1: dense softmax attention, written out step by step.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V        (Vaswani et al. 2017)

Every query scores every key, so the score matrix is (n, n): time and memory grow as n^2.
That quadratic matrix is what the later stages learn to avoid. Before allocating it this
module checks it fits in memory and says so clearly instead of being killed.
"""

from __future__ import annotations

import torch

from ._checks import check_qkv, default_scale, ensure_scores_fit

# (B, H, N, N) tensors alive at once: scores, weights, and one more in autograd/softmax.
SCORE_COPIES = 3


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    return_weights: bool = False,
):
    """softmax(q k^T * scale) v for q, k, v of shape (batch, heads, seq_len, head_dim).

    Returns the output shaped like q, and with ``return_weights=True`` also the attention
    weights (batch, heads, seq_len, seq_len).
    """
    batch, heads, seq_len, head_dim = check_qkv(q, k, v)
    scale = default_scale(head_dim, scale)
    ensure_scores_fit(batch, heads, seq_len, q.dtype, q.device, SCORE_COPIES)

    # 1. scores: how well each query matches each key
    scores = q @ k.transpose(-2, -1)  # (B, H, N, D) @ (B, H, D, N) -> (B, H, N, N)
    # 2. scale: keeps the dot products' variance ~1 so softmax does not saturate
    scores = scores * scale
    # 3. softmax over keys: each row becomes a probability distribution
    weights = torch.softmax(scores, dim=-1)  # (B, H, N, N)
    # 4. weighted sum of values
    out = weights @ v  # (B, H, N, N) @ (B, H, N, D) -> (B, H, N, D)
    return (out, weights) if return_weights else out
