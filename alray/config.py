"""Frozen, validated configuration objects.

Each config checks itself in ``__post_init__`` and reports every problem at once in
one ``ConfigError``. ``from_dict``/``to_dict`` round-trip through plain data (and YAML),
so a config can cross a Ray boundary or be frozen into a run directory.
Stdlib and yaml only: importing this module never imports torch or Ray.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from alray.errors import ConfigError

STUDY_MODALITY_DIMS = {"image": 1024, "text": 300}
DEFAULT_STEPS = 100  # the study's loop length after the passive step
STUDY_BRANCH_WIDTHS = {"image": (512, 256), "text": (256, 256)}


def branch_widths_for(dims: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
    """The study's branch widths for its modalities; two blocks of 256 for any other."""
    return {m: STUDY_BRANCH_WIDTHS.get(m, (256, 256)) for m in dims}


class Config:
    """Shared behaviour of the config dataclasses: dict/YAML round trip, one ConfigError."""

    def _check(self) -> list[str]:  # overridden: returns the problems found
        return []

    def __post_init__(self) -> None:
        problems = self._check()
        if problems:
            name = type(self).__name__
            raise ConfigError(f"{name}: {problems[0]}", [f"{name}: {p}" for p in problems])

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    # option -> config class, for options that are configs themselves (plain data in,
    # objects out, so a run.json round-trips to an equal config)
    _NESTED: dict = {}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None):
        data = dict(data or {})
        for name, kind in cls._NESTED.items():
            if isinstance(data.get(name), Mapping):
                data[name] = kind.from_dict(data[name])
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{cls.__name__}: unknown option(s) {', '.join(unknown)}; "
                f"valid: {', '.join(sorted(known))}")
        return cls(**{k: _freeze(v) for k, v in data.items()})

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=True)

    @classmethod
    def from_yaml(cls, path: str | Path):
        try:
            data = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read config: {exc}") from None
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"{path}: a config file must hold a mapping of options")
        return cls.from_dict(data)


def int_problems(config, names, minimum: int = 1) -> list[str]:
    """``"<name> must be an integer >= minimum"`` for each of ``names`` that is not."""
    return [f"{name} must be an integer >= {minimum}, got {getattr(config, name)!r}"
            for name in names if isinstance(getattr(config, name), bool)
            or not isinstance(getattr(config, name), int) or getattr(config, name) < minimum]


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _freeze(value):
    """Lists from YAML/JSON become tuples so configs stay comparable and hashable-ish."""
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return {k: _freeze(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class PoolConfig(Config):
    """Column names of a pool: an id, one embedding column per modality, a label, and
    ``show_columns``: other columns of the pool (a URL, a title, a snippet) copied into
    every query for the people who label it. Nothing else reads them: they change no
    score and no metric."""

    id_column: str = "id"
    label_column: str = "label"
    embedding_columns: Mapping[str, str] = field(
        default_factory=lambda: {"image": "image_emb", "text": "text_emb"})
    show_columns: tuple[str, ...] = ()

    def _check(self) -> list[str]:
        problems = []
        cols = [self.id_column, self.label_column, *self.embedding_columns.values()]
        if not self.embedding_columns:
            problems.append("embedding_columns needs at least one modality")
        if len(set(cols)) != len(cols):
            problems.append(f"column names must be distinct, got {cols}")
        if any(not isinstance(c, str) or not c for c in [*cols, *self.show_columns]):
            problems.append("column names must be non-empty strings")
        shown = list(self.show_columns)
        if len(set(shown)) != len(shown) or set(shown) & set(cols):
            problems.append(f"show_columns {shown} must be distinct and not the id, label "
                            f"or embedding columns ({cols})")
        return problems

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.embedding_columns)


@dataclass(frozen=True)
class ModelConfig(Config):
    """The late-fusion multi-head network (defaults: the study's public code)."""

    modality_dims: Mapping[str, int] = field(default_factory=lambda: dict(STUDY_MODALITY_DIMS))
    branch_widths: Mapping[str, tuple[int, ...]] = field(
        default_factory=lambda: dict(STUDY_BRANCH_WIDTHS))
    fused_widths: tuple[int, ...] = (128, 128)
    n_classes: int = 50
    dropout: float = 0.5
    # "multi": one head per modality plus the fused head (the study's model);
    # "fused": the fused head alone (the study's single-output comparison)
    heads: str = "multi"
    learning_loss: bool = False
    learning_loss_width: int = 128

    def _check(self) -> list[str]:
        problems = []
        if not self.modality_dims:
            problems.append("modality_dims needs at least one modality")
        if set(self.modality_dims) != set(self.branch_widths):
            problems.append(
                f"branch_widths modalities {sorted(self.branch_widths)} differ from "
                f"modality_dims modalities {sorted(self.modality_dims)}")
        for name, dim in self.modality_dims.items():
            if not isinstance(dim, int) or dim <= 0:
                problems.append(f"modality_dims[{name}] must be a positive integer, got {dim!r}")
        for name, widths in self.branch_widths.items():
            if not widths or any(not isinstance(w, int) or w <= 0 for w in widths):
                problems.append(f"branch_widths[{name}] must be positive integers, got {widths!r}")
        if not self.fused_widths or any(not isinstance(w, int) or w <= 0
                                        for w in self.fused_widths):
            problems.append(f"fused_widths must be positive integers, got {self.fused_widths!r}")
        if not isinstance(self.n_classes, int) or self.n_classes < 2:
            problems.append(f"n_classes must be an integer >= 2, got {self.n_classes!r}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.heads not in ("multi", "fused"):
            problems.append(f"heads must be 'multi' or 'fused', got {self.heads!r}")
        if self.learning_loss_width <= 0:
            problems.append("learning_loss_width must be positive")
        return problems

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.modality_dims)


@dataclass(frozen=True)
class TrainConfig(Config):
    """Passive training (fit) and active-phase fine-tuning (the study's settings)."""

    epochs: int = 45
    fine_tune_epochs: int = 1
    lr: float = 1e-3
    weight_decay: float = 5e-4
    batch_size: int = 512
    adaptive_batch: bool = True
    freeze_batchnorm: bool = False
    freeze_first_block: bool = False  # active phase: first blocks kept, outputs cached
    loss_weighting: str = "learned"  # Kendall et al.'s weights; "equal": a plain sum
    class_weights: tuple[float, ...] | None = None
    learning_loss_lambda: float = 1.0
    learning_loss_margin: float = 1.0
    seed: int = 0

    def _check(self) -> list[str]:
        problems = int_problems(self, ("epochs", "fine_tune_epochs", "batch_size"))
        if self.lr <= 0:
            problems.append(f"lr must be > 0, got {self.lr!r}")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.loss_weighting not in ("learned", "equal"):
            problems.append(f"loss_weighting must be 'learned' or 'equal', "
                            f"got {self.loss_weighting!r}")
        if self.class_weights is not None and any(w < 0 for w in self.class_weights):
            problems.append("class_weights must be >= 0")
        if self.learning_loss_lambda < 0 or self.learning_loss_margin < 0:
            problems.append("learning_loss_lambda and learning_loss_margin must be >= 0")
        return problems


@dataclass(frozen=True)
class ScoreConfig(Config):
    """What a query is: strategies, query size, MC samples and how the query is drawn.
    Science only: where and how fast the pool is scored is ``ComputeConfig``'s, and the
    step a query belongs to is an argument of each scoring call."""

    strategies: tuple[str, ...] = ("margin",)
    query_size: int = 20
    head: str = "fused"
    mc_samples: int = 20
    seed: int = 0
    # docs/acquisition.md: "top" (deterministic) or Gumbel-top-k "softmax"/"power"/"rank"
    sampling: str = "top"
    sampling_beta: float = 1.0
    class_balance: float = 0.0      # 0: off; else rounds over predicted classes
    # 0: the whole pool; N: a seeded random subset per step; "knn:K": the labelled
    # posts' K nearest neighbours in the ``neighbours`` graph (alray neighbours's file)
    candidates: int | str = 0
    neighbours: str = ""
    cluster_margin: float = 0.0     # Cluster-Margin: round robin over this x query_size best
    clusters: str = ""              # ... grouped by this clustering (alray cluster's file)

    def _check(self) -> list[str]:
        problems = _sampling_problems(self) + int_problems(self, ("query_size", "mc_samples"))
        if not self.strategies:
            problems.append("strategies needs at least one strategy")
        return problems

    @property
    def class_cap(self) -> int:
        """Rounds over predicted classes (posts per class before the fill); 0 = off."""
        if not self.class_balance:
            return 0
        return max(1, math.ceil(self.class_balance * self.query_size - 1e-9))

    @property
    def knn(self) -> int:  # K of candidates "knn:K"; 0 for a count of candidates
        return _knn_of(self.candidates) or 0


def _knn_of(value) -> int | None:
    """K of a valid ``"knn:K"`` (K >= 1), else None."""
    k = value[4:] if isinstance(value, str) and value.startswith("knn:") else ""
    return int(k) if k.isdigit() and int(k) >= 1 else None


def _sampling_problems(score: "ScoreConfig") -> list[str]:
    problems = []
    if score.sampling not in ("top", "softmax", "power", "rank"):
        problems.append(f"sampling must be top, softmax, power or rank, got {score.sampling!r}")
    beta = score.sampling_beta
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 < beta < 1e6:
        problems.append(f"sampling_beta must be a number in (0, 1e6), got {beta!r}")
    n = score.candidates
    if isinstance(n, str):
        if _knn_of(n) is None:
            problems.append(f"candidates must be an integer >= 0 (0 = the whole pool) or "
                            f"knn:K with an integer K >= 1, got {n!r}")
        elif not score.neighbours:
            problems.append(f"candidates {n} needs neighbours (--neighbours): the pool's "
                            "graph from alray neighbours")
    elif isinstance(n, bool) or not isinstance(n, int) or n < 0:
        problems.append(f"candidates must be an integer >= 0 (0 = the whole pool), got {n!r}")
    elif 0 < n < score.query_size:
        problems.append(f"candidates {n} is smaller than the query size {score.query_size}")
    share = score.class_balance
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        problems.append(f"class_balance must be a share in [0, 1] (0 = off), got {share!r}")
    if score.cluster_margin and (score.cluster_margin < 1 or not score.clusters
                                 or score.class_balance):
        problems.append(f"cluster_margin {score.cluster_margin!r} needs a value >= 1, a "
                        "clusters file (alray cluster), and no class_balance")
    return problems


@dataclass(frozen=True)
class LoopConfig(Config):
    """One active-learning run: what is frozen into its run directory, whole.

    The step budget (a resumed run may extend it) and the compute layout
    (``ComputeConfig``) are not part of it: the query and the metrics depend on neither.
    """

    pool_uri: str = ""
    val_uri: str = ""
    initial: int = 2000
    initial_strategy: str = "random"   # or "typiclust": typical posts of clusters
    seed: int = 0
    assessors: bool = False
    columns: PoolConfig = field(default_factory=PoolConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)

    _NESTED = {"columns": PoolConfig, "model": ModelConfig, "train": TrainConfig,
               "score": ScoreConfig}

    def _check(self) -> list[str]:
        problems = []
        if not self.pool_uri:
            problems.append("pool_uri is required")
        if not self.val_uri:
            problems.append("val_uri is required (a labelled validation pool)")
        problems += int_problems(self, ("initial",))
        if self.initial_strategy not in ("random", "typiclust"):
            problems.append(f"initial_strategy must be random or typiclust, got "
                            f"{self.initial_strategy!r}")
        if len(self.score.strategies) != 1:
            problems.append(f"a loop queries with one strategy, got {list(self.score.strategies)}")
        if set(self.model.modalities) != set(self.columns.modalities):
            problems.append(f"model modalities {sorted(self.model.modalities)} differ from "
                            f"the pool's {sorted(self.columns.modalities)}")
        return problems

    @property
    def strategy(self) -> str:
        return self.score.strategies[0]

    @property
    def query_size(self) -> int:
        return self.score.query_size

    def differences(self, other: "LoopConfig") -> list[str]:
        """``key: this -> other`` for every frozen option that differs."""
        mine, theirs = flatten(self.to_dict()), flatten(other.to_dict())
        return [f"{key}: {mine.get(key)!r} -> {theirs.get(key)!r}"
                for key in sorted(set(mine) | set(theirs))
                if mine.get(key) != theirs.get(key)]


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and key not in ("modality_dims", "branch_widths",
                                                       "embedding_columns"):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@dataclass(frozen=True)
class ComputeConfig(Config):
    """Where and how fast the work runs; nothing in it changes a query or a metric.

    ``local``: in this process, no Ray; else on Ray (the embedded one unless ``address``).
    Scoring: ``score_actors`` actors of ``score_cpus_per_actor`` CPUs (None: 0.5 on the
    embedded Ray, where Ray Data's reads need the other CPUs; 1 on a cluster), their GPUs
    and batch size; a loop's actors keep the pool ``resident`` (checked and explained in
    ``alray.scoring.resident``). Training: a Ray Train group of ``train_workers``."""

    local: bool = False
    address: str | None = None
    score_actors: int = 1
    score_cpus_per_actor: float | None = None
    score_gpus_per_actor: float = 0.0
    score_batch_size: int = 4096
    train_workers: int = 1
    train_gpus_per_worker: float = 0.0
    train_cpus_per_worker: float | None = None  # None: the training service's default
    train_threads: int | None = None             # torch threads per worker
    resident: bool = True                        # False: stream the pool every step
    resident_dtype: str = "float32"              # or float16: half the memory, rounded
    resident_memory_mb: int | None = None        # a node's; None: half its Ray memory

    def _check(self) -> list[str]:
        problems = int_problems(self, ("score_actors", "score_batch_size", "train_workers"))
        for name in ("score_cpus_per_actor", "train_cpus_per_worker", "train_threads"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0 (or unset), got {getattr(self, name)!r}")
        if self.score_gpus_per_actor < 0 or self.train_gpus_per_worker < 0:
            problems.append("score_gpus_per_actor and train_gpus_per_worker must be >= 0")
        if self.local and self.address:
            problems.append("local and address exclude each other")
        return problems

    @property
    def cpus_per_actor(self) -> float:
        """The scoring actors' CPUs, the default resolved."""
        return (float(self.score_cpus_per_actor) if self.score_cpus_per_actor is not None
                else 1.0 if self.address else 0.5)
