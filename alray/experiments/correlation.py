"""The study's correlation experiment (tables 1-2), done right.

Per seed: train the passive model on a seeded initial set (the same set and weights as
the loop's step 0 for that seed); draw ``candidates`` labelled posts outside it (the
pool's labels are the truth: simulation); score each with the passive model: its true
loss (cross-entropy of the fused head, as the ``ideal_loss`` oracle ranks) and its
margin ``p1 - p2``; sort by loss (ties by id) and cut into **disjoint** groups of
``group_size``; fine-tune one model per group from the passive weights and Adam state on
initial set + group (``train.fine_tune_epochs`` epochs, seeded per group), as parallel Ray
tasks; score each on the validation pool. Then the Spearman rho of group accuracy against
the group's mean loss and mean margin: per seed with its p-value and a seeded 95%
bootstrap interval over groups, and over seeds the mean rho with a Student-t interval.

The study's groups overlapped (consecutive windows shifted by one post), so neighbouring
"groups" shared 99 posts and their accuracies were not independent observations.
"""
from __future__ import annotations

import os
import time
import warnings
from typing import Callable, Sequence

import numpy as np

from alray import seeds
from alray.config import ModelConfig, PoolConfig, TrainConfig
from alray.errors import ConfigError, EmptyPoolError, LabelsError
from alray.experiments.stats import mean_interval, one_sample_t_test, spearman_interval

PAIRS = {"loss": "accuracy vs loss", "margin": "accuracy vs margin"}
STUDY = {"loss": (-0.2518, 0.0115), "margin": (0.2461, 0.0136)}  # posts, tables 1-2
N_BOOT = 2000
Progress = Callable[[int, int], None]


# --- pure parts: sampling, grouping, statistics ---------------------------------------
def sample_candidates(ids: np.ndarray, labels: np.ndarray, exclude: np.ndarray, n: int,
                      seed: int) -> np.ndarray:
    """``n`` distinct labelled ids not in ``exclude``, drawn uniformly, seeded.
    ``ids``, ``labels``: ``(pool,)``; independent of the pool's row order."""
    labelled = np.sort(ids[labels >= 0])
    rest = labelled[~np.isin(labelled, exclude)]
    if n > len(rest):
        raise EmptyPoolError(f"{n:,} candidates asked, {len(rest):,} labelled posts are "
                             f"outside the initial set of {len(exclude):,}")
    rng = seeds.rng(seed, "correlation", "candidates")
    return rest[rng.choice(len(rest), n, replace=False)]


def cut_groups(loss: np.ndarray, ids: np.ndarray, group_size: int) -> np.ndarray:
    """``(n,)`` group of each post: sorted by loss (ties by id), cut into consecutive
    disjoint groups of ``group_size`` (group 0 = lowest losses). ``n`` must divide."""
    n = len(loss)
    if group_size < 1 or n % group_size:
        raise ConfigError(f"{n:,} candidates do not cut into groups of {group_size}")
    order = np.lexsort((ids, loss))
    groups = np.empty(n, dtype=np.int64)
    groups[order] = np.arange(n) // group_size
    return groups


def group_means(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``(n_groups,)`` mean of ``values`` ``(n,)`` in each group ``0..n_groups-1``."""
    return np.bincount(groups, weights=values) / np.bincount(groups)


def spearman_stats(y: np.ndarray, x: np.ndarray, seed: int, n_boot: int = N_BOOT,
                   level: float = 0.95, resamples: np.ndarray | None = None) -> dict:
    """Spearman rho of ``y`` against ``x`` (both ``(n,)``), its p-value and a percentile
    bootstrap ``level`` interval over the n points (``stats.spearman_interval``), the
    resamples drawn from the seed's bootstrap stream unless given (``(n_boot, n)``)."""
    if resamples is None:
        resamples = _bootstrap_draw(seed, len(y), n_boot)
    return spearman_interval(y, x, resamples, level)


def _bootstrap_draw(seed: int, n: int, n_boot: int) -> np.ndarray:
    return seeds.rng(seed, "correlation", "bootstrap").integers(0, n, (n_boot, n))


def seed_statistics(groups: dict, seed: int, n_boot: int = N_BOOT) -> list[dict]:
    """One row per pair for one seed's groups (``accuracy``, ``mean_loss``,
    ``mean_margin``: ``(n_groups,)``); both pairs share one bootstrap draw."""
    acc = np.asarray(groups["accuracy"], np.float64)
    draw = _bootstrap_draw(seed, len(acc), n_boot)
    return [{"seed": int(seed), "pair": pair, "groups": len(acc),
             **spearman_stats(acc, groups[f"mean_{pair}"], seed, n_boot, resamples=draw)}
            for pair in PAIRS]


def across_seeds(per_seed: list[dict]) -> list[dict]:
    """Per pair: mean rho over seeds with its 95% Student-t interval, and the p-value of
    a one-sample t-test of rho = 0 over seeds (NaN with one seed)."""
    rows = []
    for pair in PAIRS:
        rhos = np.array([r["rho"] for r in per_seed if r["pair"] == pair], np.float64)
        mean, low, high = mean_interval(rhos)
        rows.append({"pair": pair, "seeds": int(np.isfinite(rhos).sum()), "rho": mean,
                     "low": low, "high": high, "p_value": one_sample_t_test(rhos)})
    return rows


def group_seed(seed: int, group: int) -> int:
    """The fine-tuning seed of one group model: distinct per (seed, group)."""
    return seeds.derive_seed(seed, "correlation", "fine_tune", group)


# --- Ray tasks (module level, so workers import them) ---------------------------------
def _model(model: dict, weights):
    import torch

    from alray.model.fusion import FusionNet

    with torch.random.fork_rng(devices=[]):
        net = FusionNet(ModelConfig.from_dict(model))
    net.load_state_dict(weights)
    return net.eval()


def _accuracy(model: dict, weights, val) -> dict:
    from alray.train.core import evaluate

    m = evaluate(_model(model, weights), val, heads=("fused",))["fused"]
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}


def fit_task(model: dict, train: dict, initial, val, threads: int) -> dict:
    """Passive fit on the initial set: weights, Adam state and validation accuracy."""
    import torch

    from alray.train.worker import new_request, run_request

    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    reply = run_request(new_request("fit", ModelConfig.from_dict(model),
                                    TrainConfig.from_dict(train), initial))
    return {"weights": reply["weights"], "train_state": reply["train_state"],
            **_accuracy(model, reply["weights"], val), "seconds": reply["seconds"]}


def group_task(model: dict, train: dict, passive: dict, initial, candidates, rows,
               val, step_seed: int, threads: int) -> dict:
    """Fine-tune the passive model (weights and Adam state) on initial set + the
    candidates at ``rows``; its validation accuracy."""
    import torch

    from alray.pool.arrays import PostArrays
    from alray.train.worker import new_request, run_request

    started = time.perf_counter()
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    data = PostArrays.concat([initial, candidates.take(rows)])
    reply = run_request(new_request("fine_tune", ModelConfig.from_dict(model),
                                    TrainConfig.from_dict(train), data, passive["weights"],
                                    passive["train_state"], step_seed))
    return {**_accuracy(model, reply["weights"], val),
            "seconds": time.perf_counter() - started, "pid": os.getpid()}


# --- the experiment -------------------------------------------------------------------
def score_candidates(model: dict, weights, data) -> tuple[np.ndarray, np.ndarray]:
    """``(n,)`` true loss (fused head, ``acquisition.true_loss``) and ``(n,)`` margin
    ``p1 - p2`` (the study's margin; the ``margin`` strategy's score is its negative)."""
    from alray.acquisition.functions import margin, true_loss
    from alray.train.core import predict_probs

    probs = predict_probs(_model(model, weights), data)["fused"]
    return true_loss(probs, data.labels), -margin(probs)


def check_sizes(initial: int, candidates: int, group_size: int, seeds) -> None:
    """Every problem with the experiment's sizes, in one ConfigError."""
    problems = []
    sizes = {"initial": initial, "candidates": candidates, "group_size": group_size}
    wrong = [f"{k} must be an integer, got {v!r}" for k, v in sizes.items()
             if not isinstance(v, int) or isinstance(v, bool)]
    if wrong:
        raise ConfigError(wrong[0], wrong)
    if not seeds or len(set(seeds)) != len(seeds):
        problems.append(f"seeds must be distinct and at least one, got {list(seeds)}")
    if initial < 1 or group_size < 1 or candidates < 1:
        problems.append(f"initial, candidates and group_size must be >= 1, got "
                        f"{initial}, {candidates}, {group_size}")
    elif candidates % group_size:
        problems.append(f"candidates ({candidates:,}) must be a multiple of group_size "
                        f"({group_size}): groups are disjoint and equal")
    elif candidates // group_size < 3:
        problems.append(f"{candidates // group_size} groups: Spearman needs at least 3")
    if problems:
        raise ConfigError(problems[0], problems)


def _rows_of(data, wanted: np.ndarray):
    """The rows of ``data`` with ids ``wanted``, in that order."""
    order = np.argsort(data.ids, kind="stable")
    return data.take(order[np.searchsorted(data.ids[order], wanted)])


def _draw_and_load(pool_uri: str, val_uri: str, columns: PoolConfig, model: ModelConfig,
                   seeds: list[int], initial: int, candidates: int):
    """Per seed ``(initial rows, candidate rows)`` (one read of the pool for every seed;
    the initial set is the loop's for that seed, in its order) and the validation rows."""
    from alray.pool.load import draw_labelled, load_rows, read_ids_and_labels

    ids, labels = read_ids_and_labels(pool_uri, columns)
    picks = {}
    for seed in seeds:
        start = draw_labelled(ids, labels, initial, seed, pool_uri)[0]
        picks[seed] = (start, sample_candidates(ids, labels, start, candidates, seed))
    needed = np.unique(np.concatenate([np.concatenate(p) for p in picks.values()]))
    data, val = load_rows(pool_uri, columns, ids=needed), load_rows(val_uri, columns)
    dims = {m: f.shape[1] for m, f in data.features.items()}
    if dims != dict(model.modality_dims):
        raise ConfigError(f"the model's input dims {dict(model.modality_dims)} differ from "
                          f"the pool's {dims}")
    top = int(max(data.labels.max(), val.labels.max()))
    if top >= model.n_classes:
        raise LabelsError(f"label {top} is out of range for {model.n_classes} classes")
    return {s: (_rows_of(data, a), _rows_of(data, b)) for s, (a, b) in picks.items()}, val


def run_correlation(pool_uri: str, val_uri: str, columns: PoolConfig, model: ModelConfig,
                    train: TrainConfig, seeds: Sequence[int], initial: int = 2000,
                    candidates: int = 10_000, group_size: int = 100,
                    progress: Progress | None = None,
                    cpus_per_task: float = 1.0,
                    n_boot: int = N_BOOT) -> dict:
    """Run the experiment (module docstring); ``model`` already shaped to the pool.

    Returns plain data: ``groups`` (rows: seed, group, size, mean_loss, mean_margin,
    min_loss, max_loss, accuracy, macro_f1, seconds), ``posts`` (columns seed, group, id,
    loss, margin: every candidate once), ``initial`` (seed -> ids), ``passive`` (rows:
    seed, accuracy, macro_f1, seconds), ``per_seed`` (rows: seed, pair, groups, rho,
    p_value, low, high), ``summary`` (rows: pair, seeds, rho, low, high, p_value) and
    ``settings``. Each Ray task takes ``cpus_per_task`` CPUs and as many torch threads
    (at least one); ``progress(done, total)`` counts finished tasks. Nothing is written:
    ``correlation_report.write_outputs`` turns the result into files.
    """
    from alray.runtime import require_ray

    seeds = [int(s) for s in seeds]
    check_sizes(initial, candidates, group_size, seeds)
    sets, val = _draw_and_load(pool_uri, val_uri, columns, model, seeds, initial, candidates)
    require_ray()
    trains = {s: train.replace(seed=s).to_dict() for s in seeds}
    posts, results, passive = _run_tasks(model.to_dict(), trains, sets, val, group_size,
                                         cpus_per_task, progress)
    result = _assemble(seeds, posts, results, passive, n_boot)
    result["initial"] = {s: sets[s][0].ids for s in seeds}
    result["settings"] = {"pool": pool_uri, "val": val_uri, "seeds": seeds, "initial": initial,
                          "candidates": candidates, "group_size": group_size,
                          "model": model.to_dict(), "train": train.to_dict(),
                          "bootstrap": n_boot}
    return result


def _run_tasks(model: dict, trains: dict, sets: dict, val, group_size: int,
               cpus_per_task: float, progress: Progress | None):
    """Every seed's passive fit at once; a seed's group tasks as soon as its passive
    model has scored the candidates. Returns (posts per seed, (seed, group) -> reply,
    passive rows)."""
    import ray

    threads = max(1, int(cpus_per_task))
    fit = ray.remote(num_cpus=cpus_per_task)(fit_task)
    tune = ray.remote(num_cpus=cpus_per_task)(group_task)
    val_ref = ray.put(val)
    initial_refs = {s: ray.put(sets[s][0]) for s in sets}
    fits = {s: fit.remote(model, trains[s], initial_refs[s], val_ref, threads) for s in sets}
    n_groups = len(next(iter(sets.values()))[1]) // group_size
    total, done = len(sets) * (1 + n_groups), 0
    posts, pending, passive = [], {}, []
    for seed, (_, cands) in sets.items():
        reply = ray.get(fits[seed])  # the group tasks pass the ref on: no copy here
        done += 1
        if progress:
            progress(done, total)
        passive.append({"seed": seed, "accuracy": reply["accuracy"],
                        "macro_f1": reply["macro_f1"], "seconds": reply["seconds"]})
        loss, margin = score_candidates(model, reply["weights"], cands)
        group = cut_groups(loss, cands.ids, group_size)
        posts.append({"seed": np.full(len(cands), seed), "group": group, "id": cands.ids,
                      "loss": loss, "margin": margin})
        cands_ref = ray.put(cands)
        for g in range(n_groups):
            ref = tune.remote(model, trains[seed], fits[seed], initial_refs[seed], cands_ref,
                              np.flatnonzero(group == g), val_ref, group_seed(seed, g),
                              threads)
            pending[ref] = (seed, g)
    results = {}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        results[pending.pop(ready[0])] = ray.get(ready[0])
        done += 1
        if progress:
            progress(done, total)
    return posts, results, passive


def _assemble(seeds, posts, results, passive, n_boot) -> dict:
    groups, per_seed = [], []
    for seed, p in zip(seeds, posts):
        n_groups = int(p["group"].max()) + 1
        stats = {"mean_loss": group_means(p["loss"], p["group"]),
                 "mean_margin": group_means(p["margin"], p["group"]),
                 "accuracy": np.array([results[seed, g]["accuracy"] for g in range(n_groups)])}
        low = np.full(n_groups, np.inf)
        high = np.full(n_groups, -np.inf)
        np.minimum.at(low, p["group"], p["loss"])
        np.maximum.at(high, p["group"], p["loss"])
        for g in range(n_groups):
            r = results[seed, g]
            groups.append({"seed": seed, "group": g, "size": int((p["group"] == g).sum()),
                           "mean_loss": float(stats["mean_loss"][g]),
                           "mean_margin": float(stats["mean_margin"][g]),
                           "min_loss": float(low[g]), "max_loss": float(high[g]),
                           "accuracy": r["accuracy"], "macro_f1": r["macro_f1"],
                           "seconds": r["seconds"]})
        per_seed += seed_statistics(stats, seed, n_boot)
    posts_cols = {k: np.concatenate([p[k] for p in posts]) for k in posts[0]}
    return {"groups": groups, "posts": posts_cols, "passive": passive, "per_seed": per_seed,
            "summary": across_seeds(per_seed)}
