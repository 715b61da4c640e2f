"""The long-range task: its data, its model's respect for the mask, and a tiny CLI run."""

from __future__ import annotations

import json

import torch

from sparse_attn_edu import longrange, patterns


def test_batch_has_one_needle_in_the_far_half_matching_its_label():
    cfg = longrange.Config(seq_len=40, classes=5, haystack=3)
    tokens, labels, where = longrange.make_batch(cfg, 64, torch.Generator().manual_seed(0))
    first_needle = longrange.FIRST_HAYSTACK + cfg.haystack
    is_needle = tokens >= first_needle
    assert (tokens[:, 0] == longrange.CLS).all()
    assert (is_needle.sum(1) == 1).all()
    assert torch.equal(is_needle.float().argmax(1), where)
    assert ((where >= 20) & (where < 40)).all()
    assert torch.equal(tokens[torch.arange(64), where] - first_needle, labels)
    _, balanced, _ = longrange.make_batch(cfg, 64, torch.Generator(), balanced=True)
    counts = balanced.bincount(minlength=5)
    assert counts.max() - counts.min() <= 1  # 64 = 5 * 12 + 4: counts of 12 and 13


def test_window_model_cannot_see_past_its_receptive_field():
    # Two layers of window 4 reach 2 * 2 = 4 positions: CLS (position 0) sees 0..4 only.
    cfg = longrange.Config(seq_len=24, window=4, layers=2, dim=8, heads=2)
    torch.manual_seed(0)
    model = longrange.TinyTransformer(cfg, patterns.sliding_window(24, 4)).eval()
    tokens, _, _ = longrange.make_batch(cfg, 4, torch.Generator().manual_seed(1))
    far, near = tokens.clone(), tokens.clone()
    far[:, 5:] = longrange.FIRST_HAYSTACK  # rewrite everything beyond reach
    first = longrange.FIRST_HAYSTACK
    near[:, 4] = torch.where(tokens[:, 4] == first, first + 1, first)  # changed, within reach
    with torch.no_grad():
        base, beyond, edge = model(tokens), model(far), model(near)
    assert torch.equal(base, beyond)  # bit for bit: masked pairs contribute exact zeros
    assert not torch.equal(base, edge)


def test_cli_writes_results_for_every_variant(tmp_path):
    out = tmp_path / "longrange.json"
    args = "--seq-len 32 --window 2 --layers 2 --dim 8 --heads 2 --steps 2 --batch 4"
    args += " --test-size 8 --bigbird-block 4 --no-progress --out " + str(out)
    longrange.main(args.split())
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"window", "longformer", "bigbird", "dense"}
    assert report["command"].startswith("python -m sparse_attn_edu.longrange --seq-len 32")
    results = report["results"]
    # Needles sit at 16..31; two window-2 layers reach positions 0..2 only.
    assert results["window"]["needle_reachable_fraction"] == 0
    assert results["dense"]["needle_reachable_fraction"] == 1
    assert results["longformer"]["needle_reachable_fraction"] == 1  # CLS is global
    for r in results.values():
        assert 0 <= r["test_accuracy"] <= 1
        assert len(r["loss_curve"]) == 2
