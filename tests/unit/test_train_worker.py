"""run_request: the stateless training request, in-process (no Ray)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from alray.config import ModelConfig, TrainConfig
from alray.model import FusionNet
from alray.pool.arrays import PostArrays
from alray.train import Trainer, fine_tune, fit
from alray.train.service import LocalTraining, start_training
from alray.train.worker import DataParallel, new_request, run_request
from tests.unit.model_helpers import SMALL

TRAIN = TrainConfig(epochs=3, batch_size=32, seed=7)


def make_data(n=150, seed=0, config: ModelConfig = SMALL) -> PostArrays:
    """Labelled rows with a class signal in the first dimensions and missing modalities."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, config.n_classes, n)
    feats, pres = {}, {}
    for m, dim in config.modality_dims.items():
        pres[m] = rng.random(n) >= 0.2
        x = rng.normal(size=(n, dim))
        x[:, :config.n_classes] += 2.0 * np.eye(config.n_classes)[labels]
        feats[m] = (x * pres[m][:, None]).astype(np.float32)
    pres["image"] |= ~pres["text"]
    return PostArrays(ids=np.arange(n), features=feats, present=pres, labels=labels)


def same(a: dict, b: dict) -> bool:
    """Bitwise equality of two (nested) state dicts."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def seeded_model(seed: int) -> FusionNet:
    from alray.seeds import derive_seed

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init"))  # the worker's initialisation stream
        return FusionNet(SMALL)


def test_fit_then_fine_tune_equals_continuing_in_process():
    data, more = make_data(), make_data(90, seed=1)
    first = run_request(new_request("fit", SMALL, TRAIN, data))
    second = run_request(new_request("fine_tune", SMALL, TRAIN, more, first["weights"],
                                     first["train_state"], step_seed=11))
    assert len(first["history"]) == TRAIN.epochs
    assert len(second["history"]) == TRAIN.fine_tune_epochs
    assert second["seconds"] > 0 and second["workers"] == 1

    trainer = Trainer.create(seeded_model(TRAIN.seed), TRAIN)  # as the CLI initialises
    history = fit(trainer, data, TRAIN)
    assert same(first["weights"], trainer.model.state_dict())
    assert same(first["train_state"], trainer.state_dict())
    assert [r["loss"] for r in first["history"]] == [r["loss"] for r in history]
    fine_tune(trainer, more, TRAIN, step_seed=11)
    assert same(second["weights"], trainer.model.state_dict())
    assert same(second["train_state"], trainer.state_dict())


def test_same_request_same_reply_and_request_untouched():
    fitted = run_request(new_request("fit", SMALL, TRAIN, make_data()))
    request = new_request("fine_tune", SMALL, TRAIN.replace(fine_tune_epochs=2),
                          make_data(seed=3), fitted["weights"], fitted["train_state"], 5)
    before = copy.deepcopy(request)
    a, b = run_request(request), run_request(request)
    assert same(a["weights"], b["weights"]) and same(a["train_state"], b["train_state"])
    assert same(before["weights"], request["weights"])
    assert same(before["train_state"], request["train_state"])  # Adam did not write into it
    assert not same(a["weights"], fitted["weights"])
    other = run_request({**request, "step_seed": 6})
    assert not same(a["weights"], other["weights"])


def test_fine_tune_of_a_new_model_and_frozen_batchnorm():
    train = TRAIN.replace(freeze_batchnorm=True)
    reply = run_request(new_request("fine_tune", SMALL, train, make_data(), step_seed=2))
    fresh = seeded_model(train.seed).state_dict()
    stats = [k for k in fresh if k.endswith("running_mean")]
    assert stats and all(torch.equal(reply["weights"][k], fresh[k]) for k in stats)
    assert not same(reply["weights"], fresh)  # the affine weights and layers moved


def test_bad_requests_raise():
    with pytest.raises(ValueError, match="unknown training op"):
        run_request({**new_request("fit", SMALL, TRAIN, make_data()), "op": "train"})
    data = make_data()
    data.labels[:5] = -1
    with pytest.raises(ValueError, match="unlabelled"):
        LocalTraining().run(new_request("fit", SMALL, TRAIN, data))


def test_start_training_local():
    with start_training(local=True) as service:
        assert isinstance(service, LocalTraining)
        assert service.run(new_request("fit", SMALL, TRAIN.replace(epochs=1), make_data()))


def test_data_parallel_hook_with_one_rank_is_bitwise_single_process(tmp_path):
    """The hook's plumbing (shard, flat all_reduce, metric sums) changes nothing at world 1."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}",
                            rank=0, world_size=1)
    try:
        request = new_request("fit", SMALL, TRAIN, make_data())
        single, parallel = run_request(request), run_request(request, parallel=DataParallel(0, 1))
    finally:
        dist.destroy_process_group()
    assert same(single["weights"], parallel["weights"])
    assert same(single["train_state"], parallel["train_state"])
    assert [r["loss"] for r in single["history"]] == [r["loss"] for r in parallel["history"]]


def test_data_parallel_rejects_batches_too_small_to_split():
    with pytest.raises(ValueError, match="cannot be split over 4 workers"):
        DataParallel(0, 4).check([9, 8, 7])
    shards = [DataParallel(r, 3).shard(torch.arange(10)) for r in range(3)]
    assert torch.equal(torch.cat(shards), torch.arange(10))
