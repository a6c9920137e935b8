"""FusionNet, the multi-head loss, the learning-loss module and checkpoints (no Ray)."""
from __future__ import annotations

import copy
import json
import sys

import numpy as np
import pytest
import torch

from alray.config import ModelConfig
from alray.errors import CheckpointError
from alray.model import (
    FusionNet, LossPredictor, MultiHeadLoss, check_fits, load_checkpoint, load_train_state,
    per_sample_loss, ranking_loss, save_checkpoint)

from tests.unit.model_helpers import SMALL, build


def batch(n=24, seed=1, config=SMALL, absent=0.3):
    """Features, present masks (every row has a modality) and labels as tensors."""
    g = torch.Generator().manual_seed(seed)
    feats, pres = {}, {}
    for m, dim in config.modality_dims.items():
        pres[m] = torch.rand(n, generator=g) >= absent
        feats[m] = torch.randn(n, dim, generator=g) * pres[m].unsqueeze(1)
    first = config.modalities[0]
    none = ~torch.stack(list(pres.values())).any(0)
    pres[first] = pres[first] | none
    labels = torch.randint(0, config.n_classes, (n,), generator=g)
    return feats, pres, labels


def test_forward_shapes_and_heads():
    model = build().eval()
    feats, pres, _ = batch()
    out = model(feats, pres, return_hidden=True)
    assert set(out.logits) == {"fused", "image", "text"}
    assert all(v.shape == (24, 4) for v in out.logits.values())
    assert [h.shape[1] for h in out.hidden] == list(model.hidden_dims) == [10, 6, 7, 9, 5]


def test_eval_forward_is_deterministic():
    model = build().eval()
    feats, pres, _ = batch()
    a = model(feats, pres).logits["fused"]
    b = model(feats, pres).logits["fused"]
    assert torch.equal(a, b)


def test_missing_rows_do_not_depend_on_their_features():
    model = build().eval()
    feats, pres, _ = batch()
    noisy = {m: f.clone() for m, f in feats.items()}
    noisy["image"][~pres["image"]] = 1e6  # garbage where the modality is absent
    a, b = model(feats, pres).logits, model(noisy, pres).logits
    for head in ("fused", "text"):
        assert torch.equal(a[head], b[head])


def test_batchnorm_statistics_come_from_present_rows_only():
    cfg = SMALL.replace(dropout=0.0)  # no dropout noise between the two runs
    model = build(cfg).train()
    feats, pres, _ = batch(n=40, config=cfg)
    subset = copy.deepcopy(model)
    model(feats, pres)
    rows = pres["image"]
    h = feats["image"][rows]
    for block in subset.branches["image"]:
        h = block(h)
    for ours, theirs in zip(model.branches["image"], subset.branches["image"]):
        assert torch.allclose(ours.bn.running_mean, theirs.bn.running_mean, atol=1e-6)
        assert torch.allclose(ours.bn.running_var, theirs.bn.running_var, atol=1e-6)


def test_modality_absent_from_whole_batch_and_single_row_in_train_mode():
    model = build().train()
    feats, pres, labels = batch(n=10)
    pres["image"][:] = False
    pres["text"][:] = True
    before = model.branches["image"][0].bn.running_mean.clone()
    out = model(feats, pres)
    assert torch.equal(model.branches["image"][0].bn.running_mean, before)
    pres["image"][3] = True  # one present row: BN falls back to running statistics
    out = model(feats, pres)
    loss = MultiHeadLoss(model.head_names)(out.logits, labels, pres).total
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(model.missing["image"].grad).all()


def test_row_without_any_modality_is_rejected():
    model = build()
    feats, pres, _ = batch(n=6)
    pres["image"][2] = pres["text"][2] = False
    with pytest.raises(ValueError, match="no modality present"):
        model(feats, pres)


def test_one_modality_model_trains():
    cfg = ModelConfig(modality_dims={"text": 5}, branch_widths={"text": (8,)},
                      fused_widths=(6,), n_classes=3)
    model = build(cfg).train()
    feats, pres, labels = batch(n=16, config=cfg, absent=0.0)
    out = model(feats, pres)
    loss = MultiHeadLoss(model.head_names)(out.logits, labels, pres)
    loss.total.backward()
    assert set(loss.per_head) == {"fused", "text"}


def _np_forward(model: FusionNet, feats, pres):
    """Independent float64 numpy forward (train-mode BN over present rows, no dropout)."""
    p = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}

    def blocks(prefix, x, count):
        for j in range(count):
            w, b = p[f"{prefix}.{j}.linear.weight"], p[f"{prefix}.{j}.linear.bias"]
            h = np.maximum(x @ w.T + b, 0)
            mean, var = h.mean(0), h.var(0)
            x = (h - mean) / np.sqrt(var + 1e-5) * p[f"{prefix}.{j}.bn.weight"] \
                + p[f"{prefix}.{j}.bn.bias"]
        return x

    outs = {}
    for m in model.modalities:
        mask = pres[m].numpy()
        out = np.tile(p[f"missing.{m}"], (len(mask), 1))
        out[mask] = blocks(f"branches.{m}", feats[m].double().numpy()[mask],
                           len(model.branches[m]))
        outs[m] = out
    h = blocks("fused", np.concatenate([outs[m] for m in model.modalities], 1),
               len(model.fused))
    logits = {"fused": h @ p["fused_head.weight"].T + p["fused_head.bias"]}
    for m in model.modalities:
        logits[m] = outs[m] @ p[f"heads.{m}.weight"].T + p[f"heads.{m}.bias"]
    return logits


def _np_ce(logits, labels):
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return -logp[np.arange(len(labels)), labels]


def test_golden_multi_head_loss():
    cfg = SMALL.replace(dropout=0.0)
    model = build(cfg).train()
    feats, pres, labels = batch(n=32, config=cfg)
    loss_fn = MultiHeadLoss(model.head_names)
    s = np.array([0.3, -0.2, 0.5])
    loss_fn.log_vars.data = torch.tensor(s, dtype=torch.float32)
    result = loss_fn(model(feats, pres).logits, labels, pres)
    logits, y = _np_forward(model, feats, pres), labels.numpy()
    expected = 0.0
    for i, head in enumerate(model.head_names):
        rows = np.ones(len(y), bool) if head == "fused" else pres[head].numpy()
        ce = _np_ce(logits[head][rows], y[rows]).mean()
        assert float(result.per_head[head]) == pytest.approx(ce, abs=1e-5)
        expected += ce * np.exp(-s[i]) + s[i] / 2
    assert float(result.total.detach()) == pytest.approx(expected, abs=1e-5)


def test_equal_weighting_and_class_weights():
    logits = {"fused": torch.randn(8, 3), "a": torch.randn(8, 3)}
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    pres = {"a": torch.tensor([True] * 4 + [False] * 4)}
    w = torch.tensor([1.0, 2.0, 0.5])
    out = MultiHeadLoss(("fused", "a"), "equal", class_weights=w)(logits, labels, pres)
    ce = torch.nn.functional.cross_entropy
    want = ce(logits["fused"], labels, weight=w) + ce(logits["a"][:4], labels[:4], weight=w)
    assert torch.allclose(out.total, want)
    pres["a"][:] = False  # no present row: the head is skipped, no s/2 term
    out = MultiHeadLoss(("fused", "a"))(logits, labels, pres)
    assert set(out.per_head) == {"fused"}
    assert torch.allclose(out.total, ce(logits["fused"], labels))


def test_ranking_loss_golden():
    pred = torch.tensor([0.0, 1.0, 2.0, 3.0, 5.0])
    target = torch.tensor([3.0, 0.0, 9.0, 1.0, 2.0])
    # pairs (0,4): t 3<2? no -> sign +1, p 0-5=-5 -> max(0, 1+5)=6;
    #       (1,3): t 0-1 -> sign -1, p 1-3=-2 -> max(0, 1-2)=0
    assert float(ranking_loss(pred, target, 1.0)) == pytest.approx(3.0)
    assert float(ranking_loss(pred[:1], target[:1])) == 0.0
    assert per_sample_loss(torch.zeros(2, 4), torch.tensor([0, 3])).tolist() == \
        pytest.approx([np.log(4)] * 2)


def test_loss_predictor_is_part_of_the_model():
    model = build(SMALL.replace(learning_loss=True, learning_loss_width=4))
    assert isinstance(model.loss_predictor, LossPredictor)
    assert any(k.startswith("loss_predictor.") for k in model.state_dict())
    feats, pres, _ = batch(n=5)
    assert model.eval().predict_loss(feats, pres).shape == (5,)
    with pytest.raises(ValueError, match="this model has no loss predictor"):
        build().predict_loss(feats, pres)


def test_checkpoint_round_trip(tmp_path):
    cfg = SMALL.replace(learning_loss=True, learning_loss_width=4)
    model = build(cfg).eval()
    feats, pres, _ = batch()
    path = tmp_path / "ckpt"
    save_checkpoint(path, model, cfg, extra={"step": 3})
    save_checkpoint(path, model, cfg, extra={"step": 4})  # replaces the first
    loaded, config, extra = load_checkpoint(path)
    assert config == cfg and extra == {"step": 4}
    assert not loaded.training
    a, b = model(feats, pres).logits, loaded(feats, pres).logits
    assert all(torch.equal(a[h], b[h]) for h in a)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp left over
    meta = json.loads((path / "model.json").read_text())
    assert meta["modality_dims"] == {"image": 12, "text": 8} and meta["n_classes"] == 4


def test_corrupt_or_missing_checkpoint_raises(tmp_path):
    path = tmp_path / "ckpt"
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)
    save_checkpoint(path, build(), SMALL)
    (path / "weights.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="weights.pt"):
        load_checkpoint(path)
    (path / "model.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="model.json"):
        load_checkpoint(path)
    (path / "model.json").unlink()
    with pytest.raises(CheckpointError, match="missing model.json"):
        load_checkpoint(path)


class _Payload:
    """Unpickling this would create a file: a checkpoint must never run it."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_a_checkpoint_holding_code_is_refused_without_running_it(tmp_path):
    path = tmp_path / "ckpt"
    save_checkpoint(path, build(), SMALL)
    marker = tmp_path / "ran"
    torch.save({"w": _Payload(marker)}, path / "weights.pt")
    with pytest.raises(CheckpointError, match="weights.pt"):
        load_checkpoint(path)
    torch.save({"step": _Payload(marker)}, path / "train_state.pt")
    with pytest.raises(CheckpointError, match="train_state.pt"):
        load_train_state(path)
    assert not marker.exists()


def test_check_fits_names_both_sides():
    check_fits(SMALL, {"image": 12, "text": 8}, 4, "ck")
    with pytest.raises(CheckpointError) as err:
        check_fits(SMALL, {"image": 1024, "text": 8}, None, "runs/ck")
    assert "12" in str(err.value) and "1024" in str(err.value) and "runs/ck" in str(err.value)
    with pytest.raises(CheckpointError, match="4 classes.*need 50"):
        check_fits(SMALL, {"image": 12, "text": 8}, 50, "ck")
    with pytest.raises(CheckpointError, match="audio"):
        check_fits(SMALL, {"image": 12, "text": 8, "audio": 3}, None, "ck")


def test_import_does_not_pull_ray():
    import subprocess
    code = "import alray.model, alray.train, sys; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__(
        "pathlib").Path(__file__).resolve().parents[2]))
