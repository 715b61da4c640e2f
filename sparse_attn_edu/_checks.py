"""Input checks shared by every stage, so each error reads the same everywhere."""

from __future__ import annotations

import math
import os

import torch

from .patterns import Pattern, as_pattern


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int, int]:
    """Return (B, H, N, D) after checking q, k, v are (batch, heads, seq_len, head_dim)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"expected {name} to be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"expected {name} of shape (batch, heads, seq_len, head_dim), got {tuple(t.shape)}"
            )
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            "expected q, k, v of the same shape (batch, heads, seq_len, head_dim), got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"expected q, k, v of one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    return tuple(q.shape)  # type: ignore[return-value]


def default_scale(head_dim: int, scale: float | None) -> float:
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)


def check_mask(mask: torch.Tensor, batch: int, heads: int, seq_len: int) -> torch.Tensor:
    """Check a bool mask broadcasts to (B, H, N, N); return it as a 4-D tensor."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"expected a bool torch.Tensor or a Pattern, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"expected a bool mask (True = may attend), got dtype {mask.dtype}")
    if mask.dim() not in (2, 3, 4) or mask.shape[-2:] != (seq_len, seq_len):
        raise ValueError(
            f"expected a mask of shape (n, n), (H, n, n) or (B, H, n, n) with n = {seq_len}, "
            f"got {tuple(mask.shape)}"
        )
    mask4 = mask.view((1,) * (4 - mask.dim()) + tuple(mask.shape))
    if mask4.shape[1] not in (1, heads) or mask4.shape[0] not in (1, batch):
        raise ValueError(
            f"expected a mask that broadcasts to (B={batch}, H={heads}, {seq_len}, {seq_len}), "
            f"got {tuple(mask.shape)}"
        )
    return mask4


def check_pattern(pattern: Pattern | torch.Tensor, heads: int, seq_len: int) -> Pattern:
    """A Pattern (a bool tensor is wrapped) that fits q: same seq_len, shared or `heads` heads."""
    pattern = as_pattern(pattern)
    if pattern.seq_len != seq_len:
        raise ValueError(f"expected a pattern with seq_len {seq_len}, got {pattern.seq_len}")
    if pattern.num_heads not in (None, 1, heads):
        raise ValueError(
            f"expected a pattern shared by all heads or with {heads} heads, "
            f"got one with {pattern.num_heads}"
        )
    return pattern


def available_bytes(device: torch.device) -> int:
    """Memory a new allocation could take on `device` right now (best effort)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def ensure_scores_fit(
    batch: int, heads: int, seq_len: int, dtype: torch.dtype, device: torch.device, copies: int
) -> None:
    """Raise MemoryError, with the estimate, before allocating n x n tensors that cannot fit.

    `copies` is how many (B, H, N, N) tensors the stage keeps alive at once.
    """
    element = torch.empty((), dtype=dtype).element_size()
    needed = copies * batch * heads * seq_len * seq_len * element
    free = available_bytes(device)
    if needed > free:
        raise MemoryError(
            f"attention over seq_len={seq_len} needs about {needed / 2**30:.1f} GiB for "
            f"{copies} score matrices of shape ({batch}, {heads}, {seq_len}, {seq_len}) in "
            f"{dtype}, but only {free / 2**30:.1f} GiB is available on {device}; use a "
            "smaller seq_len or a sparse stage (blocked, triton_kernels)"
        )
