"""Starting and reopening runs: the model shape from the pool, the bad-input checks, the
frozen config and the pool fingerprints."""
from __future__ import annotations

import os
import warnings
from typing import Callable

import numpy as np

from alray.config import DEFAULT_STEPS, LoopConfig, PoolConfig, branch_widths_for
from alray.errors import ConfigError, EmptyPoolError, InputWarning, LabelsError, StateError
from alray.loop.state import RunDir
from alray.pool import io


def shape_model(config: LoopConfig, n_classes: int | None = None) -> LoopConfig:
    """``config`` with the model's input dims read from the pool and its class count
    (given, or one more than the largest label of the pool and the validation pool)."""
    from alray.pool.load import read_ids_and_labels
    from alray.pool.schema import infer_dims

    dims = infer_dims(config.pool_uri, config.columns)
    if n_classes is None:
        _, pool_labels = read_ids_and_labels(config.pool_uri, config.columns)
        _, val_labels = read_ids_and_labels(config.val_uri, config.columns)
        n_classes = int(max(pool_labels.max(initial=-1), val_labels.max(initial=-1))) + 1
        if n_classes < 2:
            raise LabelsError(f"{config.pool_uri}, {config.val_uri}: cannot infer the class "
                              "count from the labels; give --classes")
    widths = branch_widths_for(dims)
    model = config.model.replace(modality_dims=dims, branch_widths=widths, n_classes=n_classes)
    return config.replace(model=model)


def check_inputs(config: LoopConfig) -> None:
    """Every bad input a new run can have, found before any work starts."""
    from alray.pool.load import read_ids_and_labels, repeated_ids
    from alray.scoring.plan import check_shown

    for shard in io.pool_shards(config.pool_uri):  # before step 0's training, not after
        check_shown(config.columns, io.open_parquet(shard).schema_arrow.names, shard.uri)
    pool_ids, pool_labels = read_ids_and_labels(config.pool_uri, config.columns)
    val_ids, val_labels = read_ids_and_labels(config.val_uri, config.columns)
    n_classes, problems = config.model.n_classes, []
    for uri, ids in ((config.pool_uri, pool_ids), (config.val_uri, val_ids)):
        if len(repeated := repeated_ids(ids)):
            first = repeated[:1].tolist()[0]  # a plain int or str
            problems.append(f"{uri}: {len(repeated):,} ids occur more than once (first: "
                            f"{first!r}); ids must be unique (`alray validate {uri}` lists "
                            "where)")
    labelled = int((pool_labels >= 0).sum())
    if config.initial > labelled:
        raise EmptyPoolError(f"{config.pool_uri}: an initial set of {config.initial:,} asked, "
                             f"the pool has {labelled:,} labelled posts")
    if config.initial + config.query_size > len(pool_ids):
        raise EmptyPoolError(f"{config.pool_uri}: initial set {config.initial:,} + query "
                             f"{config.query_size:,} is larger than the pool's "
                             f"{len(pool_ids):,} posts")
    if (val_labels < 0).all():
        raise LabelsError(f"{config.val_uri}: the validation pool has no labels")
    if (pool_labels >= n_classes).any() or (val_labels >= n_classes).any():
        top = int(max(pool_labels.max(), val_labels.max()))
        problems.append(f"label {top} is out of range for {n_classes} classes "
                        "(--classes)")
    if problems:
        raise LabelsError(problems[0], problems)
    if not config.assessors:
        _warn_unreachable(config, pool_labels, val_labels)


def _warn_unreachable(config: LoopConfig, pool_labels: np.ndarray, val_labels: np.ndarray
                      ) -> None:
    """Validation classes the pool never has are normal (rare classes): no query can
    teach them, so their posts are counted in each step's ``val_unreachable`` metric."""
    val = val_labels[val_labels >= 0]
    unseen = np.setdiff1d(np.unique(val), np.unique(pool_labels[pool_labels >= 0]))
    if len(unseen):
        posts = int(np.isin(val, unseen).sum())
        warnings.warn(InputWarning(
            f"{config.val_uri}: {posts:,} of {len(val):,} validation posts have classes the "
            f"pool never has ({', '.join(map(str, unseen[:20].tolist()))}"
            + (f" and {len(unseen) - 20} more" if len(unseen) > 20 else "")
            + "); no query can reach them: the metrics count them as val_unreachable"),
            stacklevel=3)


def fingerprints(config: LoopConfig) -> dict:
    return {"pool": io.fingerprint(config.pool_uri), "val": io.fingerprint(config.val_uri)}


def new_run(run_dir: str | os.PathLike, config: LoopConfig,
            steps: int = DEFAULT_STEPS) -> RunDir:
    """Check the inputs and create the run directory with the frozen config."""
    check_inputs(config)
    return RunDir.create(run_dir, config, fingerprints(config), steps)


def new_config(pool_uri: str, val_uri: str, columns: PoolConfig = PoolConfig(),
               overrides: dict | None = None) -> LoopConfig:
    """A new run's config: the model shaped to the pool (its modalities and dims, the
    class count given as ``model.n_classes`` or inferred), then the dotted
    ``overrides``."""
    from alray.config import ModelConfig
    from alray.pool.schema import infer_dims

    overrides = dict(overrides or {})
    n_classes = overrides.pop("model.n_classes", None)
    for key in ("score.clusters", "score.neighbours"):  # may resume from another folder
        if overrides.get(key):
            overrides[key] = io.absolute_uri(overrides[key])
    dims = infer_dims(pool_uri, columns)
    model = ModelConfig(modality_dims=dims, branch_widths=branch_widths_for(dims))
    config = LoopConfig(pool_uri=io.absolute_uri(pool_uri), val_uri=io.absolute_uri(val_uri),
                        columns=columns, model=model)
    return shape_model(apply_overrides(config, overrides), n_classes)


def open_or_create(run_dir: str | os.PathLike, resume: bool | None,
                   config: Callable[[], LoopConfig], given: dict | None = None,
                   steps: int | None = None, allow_pool_change: bool = False
                   ) -> tuple[RunDir, bool]:
    """The run in ``run_dir``, reopened (``resume`` True, or None and a run is there)
    with the options ``given`` again checked against the frozen ones, or created from
    ``config()`` with the step budget ``steps`` (None: the default; a resumed run gets
    its new budget from ``run_loop``). Returns the run and whether it was resumed."""
    if resume or (resume is None and RunDir.exists(run_dir)):
        return reopen_run(run_dir, given, allow_pool_change), True
    return new_run(run_dir, config(), DEFAULT_STEPS if steps is None else steps), False


def reopen_run(run_dir: str | os.PathLike, overrides: dict | None = None,
               allow_pool_change: bool = False) -> RunDir:
    """Open a run to resume it. ``overrides``: options the user gave again (dotted
    config keys); any that differs from the frozen config is refused. The run is
    locked by this process (a second writer is refused, naming this one)."""
    run = RunDir.open(run_dir, write=True)
    if overrides:
        run.check_config(apply_overrides(run.config, overrides))
    changes = _pool_changes(run)
    if changes and not allow_pool_change:
        raise StateError(f"{run.path}: the pool changed since the run started",
                         [f"{run.path}: the pool or validation pool changed since the run "
                          "started; pass --allow-pool-change to continue on the new files:"]
                         + [f"  {c}" for c in changes])
    if changes:
        run.meta = {**run.meta, "fingerprints": fingerprints(run.config),
                    "pool_changes": run.meta.get("pool_changes", []) + [changes]}
        io.write_json(run.path / "run.json", run.meta)
    return run


def _pool_changes(run: RunDir) -> list[str]:
    old = run.meta.get("fingerprints", {})
    new = fingerprints(run.config)
    changes = []
    for name in ("pool", "val"):
        uri = getattr(run.config, f"{name}_uri")
        changes += [f"{uri}: {c}" for c in io.fingerprint_changes(old.get(name, []), new[name])]
    return changes


def apply_overrides(config: LoopConfig, overrides: dict) -> LoopConfig:
    """``config`` with dotted keys (``train.freeze_batchnorm``) replaced."""
    data = config.to_dict()
    for key, value in overrides.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        if leaf not in node:
            raise ConfigError(f"unknown loop option {key!r}")
        node[leaf] = list(value) if isinstance(value, tuple) else value
    return LoopConfig.from_dict(data)
