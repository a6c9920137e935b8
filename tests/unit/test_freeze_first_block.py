"""--freeze-first-block: fine-tuning leaves each branch's first block as it was, and the
model (plain and MC dropout) entered at that block's cached outputs gives the full
model's results."""
from __future__ import annotations

import numpy as np
import torch

from alray.config import TrainConfig
from alray.train import Trainer, fine_tune, fit
from alray.train.worker import new_request, run_request
from tests.unit.model_helpers import SMALL, build
from tests.unit.test_train_worker import make_data

TRAIN = TrainConfig(epochs=2, batch_size=32, seed=3)
FIRST = ("branches.image.0.", "branches.text.0.")  # the first blocks' state keys


def split(state: dict) -> tuple[dict, dict]:
    """(first blocks' tensors, every other tensor), cloned."""
    first = {k: v.clone() for k, v in state.items() if k.startswith(FIRST)}
    rest = {k: v.clone() for k, v in state.items() if not k.startswith(FIRST)}
    return first, rest


def test_fine_tune_leaves_the_first_blocks_bit_identical():
    model = build()
    trainer = Trainer.create(model, TRAIN)
    fit(trainer, make_data(seed=1), TRAIN)  # the passive fit (step 0)
    first, rest = split(model.state_dict())
    assert any("running_mean" in k for k in first) and any("bn.weight" in k for k in first)
    for step in (1, 2):  # two active steps, weight decay on
        fine_tune(trainer, make_data(seed=step + 5), TRAIN.replace(freeze_first_block=True),
                  step_seed=step)
    after = model.state_dict()
    assert all(torch.equal(first[k], after[k]) for k in first)
    moved = [k for k in rest if not torch.equal(rest[k], after[k])]
    assert "branches.image.1.linear.weight" in moved and "fused_head.weight" in moved
    assert any("running_mean" in k for k in moved)  # later BatchNorms still update
    assert all(p.requires_grad for p in model.parameters())  # given back after the call
    fine_tune(trainer, make_data(seed=9), TRAIN, step_seed=3)  # the default: they move
    assert not torch.equal(first["branches.image.0.linear.weight"],
                           model.state_dict()["branches.image.0.linear.weight"])


def test_worker_fine_tune_freezes_and_fit_does_not():
    fitted = run_request(new_request("fit", SMALL, TRAIN, make_data(seed=1)))
    train = TRAIN.replace(freeze_first_block=True)
    reply = run_request(new_request("fine_tune", SMALL, train, make_data(seed=2),
                                    fitted["weights"], fitted["train_state"], step_seed=1))
    first, rest = split(fitted["weights"])
    assert all(torch.equal(first[k], reply["weights"][k]) for k in first)
    assert not torch.equal(rest["branches.image.1.linear.weight"],
                           reply["weights"]["branches.image.1.linear.weight"])
    # the passive fit itself trains the first blocks, option or not
    again = run_request(new_request("fit", SMALL, train, make_data(seed=1)))
    assert torch.equal(again["weights"]["branches.image.0.linear.weight"],
                       fitted["weights"]["branches.image.0.linear.weight"])


def first_outputs(model, data) -> dict:
    """Each branch's first-block ReLU output on every row (absent rows too)."""
    with torch.inference_mode():
        return {m: model.first_activations(m, torch.from_numpy(f)).numpy()
                for m, f in data.features.items()}


def test_model_entered_at_the_cached_first_blocks_matches_the_full_model():
    from alray.model import as_tensors

    model, data = build().eval(), make_data(n=70, seed=4)  # missing modalities included
    feats, pres = as_tensors(data.features, data.present)
    cached, _ = as_tensors(first_outputs(model, data), data.present)
    assert cached["image"].shape == (70, 10) and cached["text"].shape == (70, 7)
    with torch.inference_mode():
        full = model(feats, pres, return_hidden=True)
        short = model(cached, pres, return_hidden=True, cached=True)
    for head in model.head_names:
        torch.testing.assert_close(short.logits[head], full.logits[head], rtol=1e-5, atol=1e-5)
    for a, b in zip(short.hidden, full.hidden):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_mc_dropout_entered_at_the_cached_first_blocks_matches_the_full_path():
    from alray.model import MCDropout

    model, data = build().eval(), make_data(n=90, seed=5)
    cached = first_outputs(model, data)
    want = ("mean_probs", "mean_entropy", "samples")
    for head in model.head_names:  # the fused head (two chains) and one per modality
        full = MCDropout(model, 8, seed=11).statistics(data.features, data.present, head, want,
                                                       chunk_rows=32)
        short = MCDropout(model, 8, seed=11, cached=True).statistics(
            cached, data.present, head, want, chunk_rows=32)
        for name in want:
            torch.testing.assert_close(short[name], full[name], rtol=1e-5, atol=1e-6)
    assert not np.allclose(full["samples"][:, 0].numpy(), full["samples"][:, 1].numpy())


# --- the resident part with a cached first block (actors called in this process) -------

def small_state(seed: int):
    """A model of the test pool's dims whose first blocks narrow the rows (8 -> 5, 4 -> 3)
    and whose image branch has a second block (a folded chain after the cache)."""
    from alray.config import ModelConfig
    from alray.model import model_state
    from tests.unit.test_scorer import DIMS

    cfg = ModelConfig(modality_dims=dict(DIMS), branch_widths={"image": (5, 4), "text": (3,)},
                      fused_widths=(6,), n_classes=5)
    return model_state(build(cfg, seed).eval())


def part_query(pool, state, score, exclude, step, cached, parts=None, batch_size=17):
    """ResidentPool.score's work with the parts called here; ``parts`` reused if given."""
    from alray.config import PoolConfig
    from alray.pool import io
    from alray.scoring.merge import QueryMerger
    from alray.scoring.plan import plan_scoring
    from alray.scoring.resident import ResidentPart, plan_parts
    from tests.unit.test_scorer import DIMS

    plan = plan_scoring(pool, state, score, PoolConfig(), exclude, step, carry=True)
    if parts is None:
        parts = [ResidentPart(p, PoolConfig().to_dict(), DIMS)
                 for p in plan_parts(io.pool_shards(pool), 2)]
    merger = QueryMerger(plan.score, plan.carry)
    for part in parts:
        merger.absorb(part.score({**plan.scorer_args(), "first_block_cache": cached},
                                 batch_size))
    return merger.queries(plan.id_type), parts


def test_resident_query_with_the_cached_first_block_equals_the_raw_one(tmp_path):
    from alray.config import ScoreConfig
    from tests.conftest import make_pool_table, write_pool
    from tests.unit.test_resident import assert_same

    pool = write_pool(tmp_path / "pool", [make_pool_table(n, seed=i, first_id=1000 * i)
                                          for i, n in enumerate((70, 45, 90))])
    score = ScoreConfig(strategies=("margin", "bald", "random"), query_size=12,
                        mc_samples=20, seed=3)
    state, exclude = small_state(1), [7, 8, 1010, 2020]
    raw, _ = part_query(pool, state, score, exclude, 1, cached=False)
    cached, parts = part_query(pool, state, score, exclude, 1, cached=True)
    assert_same(raw, cached)  # ids in order, scores to float rounding, raw carried rows
    infos = [p.info() for p in parts]
    rows = [i["rows"] for i in infos]
    assert sum(rows) == 205 and all(i["first_block"] for i in infos)
    # features held: rows x (5 + 3) float32 in place of rows x (8 + 4)
    other = [i["bytes"] - r * 8 * 4 for i, r in zip(infos, rows)]
    again, _ = part_query(pool, state, score, exclude, 1, cached=False, parts=parts)
    assert_same(raw, again)  # the part read its raw rows again
    assert [p.info()["bytes"] - r * 12 * 4 for p, r in zip(parts, rows)] == other
    assert [p.info()["loads"] for p in parts] == [2, 2]
    # other first blocks: a new cache, never the old one's outputs
    state2 = small_state(2)
    want, _ = part_query(pool, state2, score, exclude, 2, cached=False)
    part_query(pool, state, score, exclude, 2, cached=True, parts=parts)
    key = parts[0].info()["first_block"]
    got, _ = part_query(pool, state2, score, exclude, 2, cached=True, parts=parts)
    assert_same(want, got)
    assert parts[0].info()["first_block"] != key
