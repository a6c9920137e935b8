"""Experiment files (``jobs/configs/*.yaml``) and the sweep or correlation they describe.

A sweep comes from a YAML file and/or options; options win. Any loop option is
``KEY=VALUE`` (dotted ``LoopConfig`` keys, e.g. ``train.epochs=45``) and any list of
values to grid over is ``KEY=V1,V2``. The smoke size shrinks an experiment to its
``smoke:`` section on a small generated pool, for CI and the demo.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from alray.config import DEFAULT_STEPS, LoopConfig, PoolConfig, TrainConfig
from alray.pool.synthetic import GeneratorConfig
from alray.errors import ConfigError
from alray.experiments.sweep import SweepConfig

FILE_KEYS = {"kind", "description", "pool", "val", "strategies", "seeds", "steps", "set", "grid",
             "cpus_per_trial", "gpus_per_trial", "max_concurrent", "smoke"}
SMOKE_KEYS = {"rows", "steps", "seeds", "set", "strategies"}


def read_experiment(path: str | Path) -> dict:
    """A shipped experiment file as a dict, its keys checked."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read experiment file: {exc}") from None
    unknown = sorted(set(data) - FILE_KEYS) + sorted(
        f"smoke.{k}" for k in set(data.get("smoke") or {}) - SMOKE_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; valid: "
                          f"{', '.join(sorted(FILE_KEYS))}")
    return data


def parse_seeds(text: str) -> tuple[int, ...]:
    """``0-4`` or ``0,1,7`` (or a YAML list) -> a tuple of ints."""
    if isinstance(text, (list, tuple)):
        return tuple(int(s) for s in text)
    seeds = []
    try:
        for part in str(text).split(","):
            low, dash, high = part.strip().partition("-")
            seeds += list(range(int(low), int(high) + 1)) if dash else [int(low)]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected a range like 0-4 or a list like "
                          "0,1,2") from None
    return tuple(seeds)


def key_values(items, option: str) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{option} {item!r}: expected KEY=VALUE")
        out[key.strip()] = value
    return out


def build_sweep(file_data: dict, opts: dict) -> SweepConfig:
    """The SweepConfig from an experiment file's values, overridden by options."""
    from alray.loop.setup import new_config

    data = dict(file_data)
    if data.get("kind", "sweep") != "sweep":
        raise ConfigError(f"the experiment file is of kind {data['kind']!r}; run it with "
                          f"`alray {data['kind']}`")
    if opts.get("smoke"):
        data = smoke_experiment(data, opts["out"])
    pool, val = opts.get("pool") or data.get("pool"), opts.get("val") or data.get("val")
    if not pool or not val:
        raise ConfigError("a sweep needs a pool and a validation pool (--pool, --val)")
    strategies = opts.get("strategies") or data.get("strategies") or "random,margin"
    if isinstance(strategies, str):
        strategies = [s.strip() for s in strategies.split(",") if s.strip()]
    from alray.acquisition import check_names
    check_names(strategies)
    settings = dict(data.get("set") or {})
    settings.update({k: yaml.safe_load(v) for k, v in key_values(opts.get("set", ()),
                                                                      "--set").items()})
    settings.update(opts.get("overrides") or {})  # options by name win over --set
    columns = PoolConfig.from_dict(settings.pop("columns", None) or {})
    loop = new_config(pool, val, columns, settings)
    grid = {k: tuple(v) for k, v in (data.get("grid") or {}).items()}
    grid.update({k: tuple(yaml.safe_load(x) for x in v.split(","))
                 for k, v in key_values(opts.get("grid", ()), "--grid").items()})
    return SweepConfig(
        loop=loop, steps=int(opts.get("steps") or data.get("steps") or DEFAULT_STEPS),
        strategies=tuple(strategies),
        seeds=parse_seeds(opts.get("seeds") or data.get("seeds", "0-4")), grid=grid,
        out=str(Path(opts["out"]).resolve()),
        cpus_per_trial=float(opts.get("cpus_per_trial") or data.get("cpus_per_trial", 1)),
        gpus_per_trial=float(opts.get("gpus_per_trial") or data.get("gpus_per_trial", 0)),
        max_concurrent=int(opts.get("max_concurrent") or data.get("max_concurrent", 0)))


def smoke_experiment(data: dict, out: str) -> dict:
    """The experiment at its smoke size, on a small study-like pool generated in OUT."""
    from alray.pool.synthetic import generate_pool

    smoke = data.get("smoke") or {}
    pool_dir = Path(out) / "smoke-pool"
    if not (pool_dir / "val").exists():
        generate_pool(str(pool_dir), GeneratorConfig(
            rows=int(smoke.get("rows", 3000)), val_rows=600, classes=10, image_dim=64,
            text_dim=32, shard_rows=1500, seed=0))
    merged = dict(data, pool=str(pool_dir / "pool"), val=str(pool_dir / "val"))
    merged["steps"] = smoke.get("steps", 3)
    merged["seeds"] = smoke.get("seeds", [0, 1])
    if "strategies" in smoke:
        merged["strategies"] = smoke["strategies"]
    merged["set"] = {**(data.get("set") or {}), "initial": 100, "score.query_size": 10,
                     "train.epochs": 3, **(smoke.get("set") or {})}
    return merged


CORRELATION_SIZES = {"initial": 2000, "candidates": 10_000, "group_size": 100}


def build_correlation(file_data: dict, opts: dict) -> dict:
    """``run_correlation``'s keyword arguments, plus ``out``, from an experiment file's
    values (``kind: correlation``) overridden by options (``pool``, ``val``, ``seeds``,
    ``initial``, ``candidates``, ``group_size``, ``set``: ``KEY=VALUE`` strings,
    ``smoke``, ``out``). Sizes are checked before any work."""
    from alray.experiments.correlation import check_sizes
    from alray.loop.setup import apply_overrides, shape_model
    from alray.pool.io import absolute_uri

    kind = file_data.get("kind", "sweep") if file_data else "correlation"
    if kind != "correlation":
        raise ConfigError(f"the experiment file is of kind {kind!r}; `alray correlation` "
                          "runs kind: correlation (use `alray sweep` for sweeps)")
    data = smoke_experiment(dict(file_data), opts["out"]) if opts.get("smoke") else dict(file_data)
    pool, val = opts.get("pool") or data.get("pool"), opts.get("val") or data.get("val")
    if not pool or not val:
        raise ConfigError("the correlation experiment needs a pool and a validation pool "
                          "(--pool, --val)")
    settings = {**CORRELATION_SIZES, **(data.get("set") or {})}
    settings.update({k: yaml.safe_load(v)
                     for k, v in key_values(opts.get("set", ()), "--set").items()})
    settings.update({k: opts[k] for k in CORRELATION_SIZES if opts.get(k) is not None})
    sizes = {k: settings.pop(k) for k in ("candidates", "group_size")}
    seeds = parse_seeds(opts.get("seeds") or data.get("seeds", "0-4"))
    check_sizes(settings.get("initial"), sizes["candidates"], sizes["group_size"], seeds)
    loop = LoopConfig(pool_uri=absolute_uri(pool), val_uri=absolute_uri(val),
                      train=TrainConfig())
    loop = shape_model(apply_overrides(loop, settings), settings.get("model.n_classes"))
    return {"pool_uri": loop.pool_uri, "val_uri": loop.val_uri, "columns": loop.columns,
            "model": loop.model, "train": loop.train, "seeds": seeds, "initial": loop.initial,
            **sizes, "out": str(Path(opts["out"]).resolve())}
