"""A long-range task: can a tiny sparse transformer find a needle it cannot reach?

Reachability (propagation.py) says which positions *can* exchange information in L layers.
This module checks that the theory predicts quality: the same tiny transformer, with our
stage-2 attention (masked.attention) under different patterns, is trained on a task whose
answer lies far from where it is asked.

The task ("needle in a haystack", classification read out at a [CLS] token, as BERT does):

    position:  0      1 ... n/2 - 1     n/2 ... n-1
    token:     CLS    haystack          haystack with one needle of class c     -> predict c

The needle sits in the second half, so it is at least n/2 positions from the CLS token.
With a sliding window of width w and L layers, CLS sees only L * w / 2 positions: a
window-only model cannot beat chance, 1 / classes. Making CLS global (Longformer's recipe
for classification) lets it read every position directly, and so does BigBird's first,
global block; dense attention is the reference. The JSON also records, from
propagation.receptive_field, the fraction of needles each pattern can reach at all.

Run it (progress bars, then a JSON file with accuracies and training curves):

    python -m sparse_attn_edu.longrange --out notebooks/results/longrange.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from . import masked, patterns, propagation

CLS, FIRST_HAYSTACK = 0, 1


@dataclass
class Config:
    seq_len: int = 128
    window: int = 8
    layers: int = 2
    dim: int = 32
    heads: int = 2
    classes: int = 8  # needle classes; chance = 1 / classes
    haystack: int = 8  # distinct filler tokens
    steps: int = 300
    batch: int = 32
    lr: float = 3e-3
    test_size: int = 2000
    seed: int = 0
    bigbird_block: int = 8

    @property
    def vocab(self) -> int:
        return FIRST_HAYSTACK + self.haystack + self.classes


def make_patterns(cfg: Config) -> dict[str, patterns.Pattern]:
    """The four variants compared: window only, + one global token, BigBird, dense."""
    n = cfg.seq_len
    return {
        "window": patterns.sliding_window(n, cfg.window),
        "longformer": patterns.longformer(n, cfg.window, global_tokens=(0,)),
        "bigbird": patterns.bigbird(
            n, cfg.bigbird_block, window_blocks=3, global_blocks=1, random_blocks=2, seed=cfg.seed
        ),
        "dense": patterns.dense(n),
    }


def make_batch(cfg: Config, size: int, generator: torch.Generator, balanced: bool = False):
    """tokens (size, n) long, labels (size,) long, needle positions (size,) long.

    `balanced` gives every class the same count (up to one), so that a model that cannot
    see the needle scores chance, 1 / classes, and not the frequency of one lucky class.
    """
    n = cfg.seq_len
    tokens = torch.randint(
        FIRST_HAYSTACK, FIRST_HAYSTACK + cfg.haystack, (size, n), generator=generator
    )
    tokens[:, 0] = CLS
    if balanced:
        labels = torch.arange(size)[torch.randperm(size, generator=generator)] % cfg.classes
    else:
        labels = torch.randint(0, cfg.classes, (size,), generator=generator)
    where = torch.randint(n // 2, n, (size,), generator=generator)  # the far half
    tokens[torch.arange(size), where] = FIRST_HAYSTACK + cfg.haystack + labels
    return tokens, labels, where


class Block(nn.Module):
    """Pre-norm transformer block whose attention is stage 2 under a fixed mask."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, N, D/H)
        att = masked.attention(q, k, v, mask)  # (B, H, N, D/H)
        x = x + self.proj(att.transpose(1, 2).reshape(b, n, d))  # residual path
        return x + self.mlp(self.norm2(x))


class TinyTransformer(nn.Module):
    """Token + learned position embeddings, `layers` blocks, a classifier on the CLS token."""

    def __init__(self, cfg: Config, pattern: patterns.Pattern):
        super().__init__()
        self.register_buffer("mask", pattern.mask, persistent=False)  # (N, N) bool
        self.embed = nn.Embedding(cfg.vocab, cfg.dim)
        self.position = nn.Parameter(0.02 * torch.randn(cfg.seq_len, cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.position  # (B, N, D)
        for block in self.blocks:
            x = block(x, self.mask)
        return self.head(self.norm(x[:, 0]))  # (B, classes): read out at CLS


def train_variant(cfg: Config, name: str, pattern: patterns.Pattern, progress: bool = True):
    """Train one variant from a fixed seed; return its accuracy and what theory predicts."""
    torch.manual_seed(cfg.seed)
    model = TinyTransformer(cfg, pattern)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg.lr, total_steps=cfg.steps)
    data = torch.Generator().manual_seed(cfg.seed + 1)  # same batches for every variant
    curve = []
    start = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc=f"{name:>10}", disable=not progress, leave=True)
    for step in bar:
        tokens, labels, _ = make_batch(cfg, cfg.batch, data)
        loss = nn.functional.cross_entropy(model(tokens), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 10 == 0 or step == cfg.steps - 1:
            curve.append([step, round(loss.item(), 4)])
            bar.set_postfix(loss=f"{loss.item():.3f}")
    seconds = time.perf_counter() - start

    # Test on fresh sequences, and ask the theory which needles can reach CLS.
    test_data = torch.Generator().manual_seed(10**6)
    tokens, labels, where = make_batch(cfg, cfg.test_size, test_data, balanced=True)
    with torch.no_grad():
        predictions = torch.cat([model(t).argmax(-1) for t in tokens.split(100)])
    field = propagation.receptive_field(pattern, 0, cfg.layers)[-1]  # (N,): reaches CLS
    reachable = field[where].double().mean().item()
    return {
        "pattern": repr(pattern),
        "density": round(pattern.density, 4),
        "layers_to_connect": _json_number(propagation.layers_to_connect(pattern)),
        "needle_reachable_fraction": round(reachable, 4),
        # A perfect model is right on reachable needles and guesses on the rest.
        "best_possible_accuracy": round(reachable + (1 - reachable) / cfg.classes, 4),
        "test_accuracy": round((predictions == labels).double().mean().item(), 4),
        "final_loss": curve[-1][1],
        "loss_curve": curve,
        "train_seconds": round(seconds, 1),
    }


def _json_number(x: int | float):
    return "inf" if x == math.inf else x


def run(cfg: Config, variants: list[str], progress: bool = True) -> dict:
    """Train every requested variant on the same data; return a JSON-ready dict."""
    available = make_patterns(cfg)
    unknown = sorted(set(variants) - set(available))
    if unknown:
        raise ValueError(f"expected variants among {sorted(available)}, got {unknown}")
    results = {name: train_variant(cfg, name, available[name], progress) for name in variants}
    return {
        "task": "needle: classify the one needle token (far half) read out at CLS (position 0)",
        "config": asdict(cfg),
        "chance": round(1 / cfg.classes, 4),
        "results": results,
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
        },
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m sparse_attn_edu.longrange", description=__doc__.split("\n\n")[0]
    )
    defaults = Config()
    for field, value in asdict(defaults).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument(
        "--variants", nargs="+", default=["window", "longformer", "bigbird", "dense"]
    )
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    cfg = Config(**{field: getattr(args, field) for field in asdict(defaults)})
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(cfg, args.variants, progress=not args.no_progress)
    report["command"] = "python -m sparse_attn_edu.longrange " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    for name, r in report["results"].items():
        print(
            f"{name:>10}: accuracy {r['test_accuracy']:.3f} (best possible "
            f"{r['best_possible_accuracy']:.3f}, chance {report['chance']:.3f})"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
    return report


if __name__ == "__main__":
    main()
