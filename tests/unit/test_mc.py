"""Fast MC dropout equals K masked plain forward passes and ignores batching (no Ray)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from alray.config import ModelConfig
from alray.model import MCDropout, dropout_masks, mc_forward_reference, mc_statistics

from tests.unit.model_helpers import SMALL as CFG
from tests.unit.model_helpers import build as _build


def build(config=CFG, seed=0):
    return _build(config, seed).eval()


def rows(n=100, seed=1, config=CFG, absent=0.3):
    rng = np.random.default_rng(seed)
    feats, pres = {}, {}
    for m, dim in config.modality_dims.items():
        pres[m] = rng.random(n) >= absent
        feats[m] = (rng.normal(size=(n, dim)) * pres[m][:, None]).astype(np.float32)
    first = config.modalities[0]
    pres[first] |= ~np.any(np.stack(list(pres.values())), axis=0)
    return feats, pres


@pytest.mark.parametrize("head", ["fused", "image", "text"])
def test_mc_equals_masked_reference(head):
    model = build()
    feats, pres = rows()
    masks = dropout_masks(model, 6, seed=11)
    ref = mc_forward_reference(model, feats, pres, masks, head=head)
    out = mc_statistics(model, feats, pres, k=6, seed=11, head=head,
                        want=("mean_probs", "mean_entropy", "samples"))
    assert out["samples"].shape == (100, 6, 4)
    assert torch.allclose(out["samples"], ref, atol=1e-5)
    assert torch.allclose(out["mean_probs"], ref.mean(1), atol=1e-5)
    entropy = -(ref * ref.clamp_min(1e-30).log()).sum(2).mean(1)
    assert torch.allclose(out["mean_entropy"], entropy, atol=1e-5)


def test_mc_with_a_modality_absent_from_the_batch_and_one_block_branches():
    cfg = ModelConfig(modality_dims={"a": 5, "b": 3}, branch_widths={"a": (4,), "b": (6, 2)},
                      fused_widths=(3,), n_classes=3, dropout=0.3)
    model = build(cfg)
    feats, pres = rows(n=30, config=cfg)
    pres["a"][:] = False
    pres["b"][:] = True
    ref = mc_forward_reference(model, feats, pres, dropout_masks(model, 4, 0))
    out = mc_statistics(model, feats, pres, 4, 0, want=("samples",))
    assert torch.allclose(out["samples"], ref, atol=1e-5)


def test_batch_split_does_not_change_scores():
    model = build()
    feats, pres = rows(n=100)
    whole = mc_statistics(model, feats, pres, 8, seed=5)
    scorer = MCDropout(model, 8, seed=5)
    parts = [scorer.statistics({m: f[i:i + 7] for m, f in feats.items()},
                               {m: p[i:i + 7] for m, p in pres.items()})
             for i in range(0, 100, 7)]
    for key in ("mean_probs", "mean_entropy"):
        joined = torch.cat([p[key] for p in parts])
        assert torch.allclose(whole[key], joined, atol=1e-6)
    chunked = mc_statistics(model, feats, pres, 8, seed=5, chunk_rows=3)
    assert torch.allclose(whole["mean_probs"], chunked["mean_probs"], atol=1e-6)


@settings(max_examples=15, deadline=None)
@given(start=st.integers(0, 60), length=st.integers(1, 40))
def test_any_row_slice_scores_like_the_whole(start, length):
    model = build()
    feats, pres = rows(n=100)
    whole = mc_statistics(model, feats, pres, 5, seed=2)["mean_probs"]
    rows_ = slice(start, start + length)
    part = mc_statistics(model, {m: f[rows_] for m, f in feats.items()},
                         {m: p[rows_] for m, p in pres.items()}, 5, seed=2)["mean_probs"]
    assert torch.allclose(whole[rows_], part, atol=1e-6)


def test_masks_are_seeded_nested_and_have_the_right_rate():
    model = build(CFG.replace(branch_widths={"image": (400, 6), "text": (7,)}))
    a, b = dropout_masks(model, 20, 1), dropout_masks(model, 5, 1)
    assert all(torch.equal(a[name][:5], b[name]) for name in b)
    assert not torch.equal(a["image.0"], dropout_masks(model, 20, 2)["image.0"])
    assert a["image.0"].shape == (20, 400)
    assert abs(a["image.0"].float().mean().item() - 0.5) < 0.02


def test_mc_is_stochastic_across_samples_and_rejects_bad_input():
    model = build()
    feats, pres = rows(n=10)
    out = mc_statistics(model, feats, pres, 4, 0, want=("samples",))["samples"]
    assert not torch.allclose(out[:, 0], out[:, 1])
    assert torch.allclose(out.sum(2), torch.ones(10, 4), atol=1e-5)
    with pytest.raises(ValueError, match="unknown statistics"):
        mc_statistics(model, feats, pres, 4, 0, want=("bald",))
    with pytest.raises(ValueError, match="unknown head"):
        mc_statistics(model, feats, pres, 4, 0, head="audio")
    empty = mc_statistics(model, {m: f[:0] for m, f in feats.items()},
                          {m: p[:0] for m, p in pres.items()}, 4, 0)
    assert empty["mean_probs"].shape == (0, 4) and empty["mean_entropy"].shape == (0,)


def test_mc_at_study_dims_matches_reference():
    model = build(ModelConfig())
    feats, pres = rows(n=40, config=ModelConfig())
    masks = dropout_masks(model, 3, 7)
    ref = mc_forward_reference(model, feats, pres, masks)
    out = mc_statistics(model, feats, pres, 3, 7, want=("samples",))["samples"]
    assert torch.allclose(out, ref, atol=1e-5)
