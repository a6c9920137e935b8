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
STUDY_BRANCH_WIDTHS = {"image": (512, 256), "text": (256, 256)}


def branch_widths_for(dims: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
    """The study's branch widths for its modalities; two blocks of 256 for any other."""
    return {m: STUDY_BRANCH_WIDTHS.get(m, (256, 256)) for m in dims}


class _Config:
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
class PoolConfig(_Config):
    """Column names of a pool: an id, one embedding column per modality, a label."""

    id_column: str = "id"
    label_column: str = "label"
    embedding_columns: Mapping[str, str] = field(
        default_factory=lambda: {"image": "image_emb", "text": "text_emb"})

    def _check(self) -> list[str]:
        problems = []
        cols = [self.id_column, self.label_column, *self.embedding_columns.values()]
        if not self.embedding_columns:
            problems.append("embedding_columns needs at least one modality")
        if len(set(cols)) != len(cols):
            problems.append(f"column names must be distinct, got {cols}")
        if any(not isinstance(c, str) or not c for c in cols):
            problems.append("column names must be non-empty strings")
        return problems

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.embedding_columns)


@dataclass(frozen=True)
class ModelConfig(_Config):
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
class TrainConfig(_Config):
    """Passive training (fit) and active-phase fine-tuning (the study's settings)."""

    epochs: int = 45
    fine_tune_epochs: int = 1
    lr: float = 1e-3
    weight_decay: float = 5e-4
    batch_size: int = 512
    adaptive_batch: bool = True
    freeze_batchnorm: bool = False
    # "learned": Kendall et al. log-variance weights; "equal": plain sum (ablation)
    loss_weighting: str = "learned"
    class_weights: tuple[float, ...] | None = None
    learning_loss_lambda: float = 1.0
    learning_loss_margin: float = 1.0
    seed: int = 0

    def _check(self) -> list[str]:
        problems = []
        for name in ("epochs", "fine_tune_epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be an integer >= 1, got {value!r}")
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
class ScoreConfig(_Config):
    """How a pool is scored: strategies, query size, MC samples and the Ray Data layout."""

    strategies: tuple[str, ...] = ("margin",)
    query_size: int = 20
    head: str = "fused"
    mc_samples: int = 20
    seed: int = 0
    batch_size: int = 4096
    actors: int = 1
    num_cpus_per_actor: float = 1.0
    num_gpus_per_actor: float = 0.0
    # docs/acquisition.md: "top" (deterministic) or Gumbel-top-k "softmax"/"power"/"rank"
    sampling: str = "top"
    sampling_beta: float = 1.0
    sampling_step: int = 0          # a new value gives every post fresh sampling noise
    class_balance: float = 0.0      # 0: off; else rounds over predicted classes
    candidates: int = 0             # 0: the whole pool; else a seeded random subset per step

    def _check(self) -> list[str]:
        problems = _sampling_problems(self)
        if not self.strategies:
            problems.append("strategies needs at least one strategy")
        if not isinstance(self.query_size, int) or self.query_size < 1:
            problems.append(f"query_size must be an integer >= 1, got {self.query_size!r}")
        if not isinstance(self.mc_samples, int) or self.mc_samples < 1:
            problems.append(f"mc_samples must be an integer >= 1, got {self.mc_samples!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            problems.append(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if not isinstance(self.actors, int) or self.actors < 1:
            problems.append(f"actors must be an integer >= 1, got {self.actors!r}")
        if self.num_cpus_per_actor < 0 or self.num_gpus_per_actor < 0:
            problems.append("num_cpus_per_actor and num_gpus_per_actor must be >= 0")
        return problems

    @property
    def class_cap(self) -> int:
        """Rounds over predicted classes (posts per class before the fill); 0 = off."""
        if not self.class_balance:
            return 0
        return max(1, math.ceil(self.class_balance * self.query_size - 1e-9))


def _sampling_problems(score: "ScoreConfig") -> list[str]:
    problems = []
    if score.sampling not in ("top", "softmax", "power", "rank"):
        problems.append(f"sampling must be top, softmax, power or rank, got {score.sampling!r}")
    beta = score.sampling_beta
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 < beta < 1e6:
        problems.append(f"sampling_beta must be a number in (0, 1e6), got {beta!r}")
    if not isinstance(score.sampling_step, int) or score.sampling_step < 0:
        problems.append(f"sampling_step must be an integer >= 0, got {score.sampling_step!r}")
    n = score.candidates
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        problems.append(f"candidates must be an integer >= 0 (0 = the whole pool), got {n!r}")
    elif 0 < n < score.query_size:
        problems.append(f"candidates {n} is smaller than the query size {score.query_size}")
    share = score.class_balance
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        problems.append(f"class_balance must be a share in [0, 1] (0 = off), got {share!r}")
    return problems


@dataclass(frozen=True)
class GeneratorConfig(_Config):
    """A study-like synthetic pool; every difficulty knob is explicit (docs/formats.md)."""

    rows: int = 250_000
    val_rows: int = 20_000
    classes: int = 50
    image_dim: int = 1024
    text_dim: int = 300
    latent_dim: int = 32
    imbalance: float = 1.0          # Zipf exponent of the class histogram (0 = balanced)
    subtopics: int = 4              # sub-clusters inside each class
    subtopic_spread: float = 1.0    # distance of sub-topics from their class centre
    class_separation: float = 1.6   # scale of the class centres against unit noise
    overlap: float = 0.3            # share of classes placed next to another class
    image_noise: float = 3.4        # modality-specific noise in the latent view (calibrated)
    text_noise: float = 3.4
    missing_image: float = 0.15     # share of posts without an image embedding
    missing_text: float = 0.10      # share of posts without a text embedding
    label_noise: float = 0.10       # share of labels an assessor gets wrong
    shard_rows: int = 50_000
    seed: int = 0

    def _check(self) -> list[str]:
        problems = []
        for name in ("rows", "classes", "image_dim", "text_dim", "latent_dim", "subtopics",
                     "shard_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.val_rows, int) or self.val_rows < 0:
            problems.append(f"val_rows must be an integer >= 0, got {self.val_rows!r}")
        if isinstance(self.classes, int) and self.classes < 2:
            problems.append("classes must be >= 2")
        for name in ("missing_image", "missing_text", "label_noise", "overlap"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                problems.append(f"{name} must be in [0, 1], got {value!r}")
        if self.missing_image + self.missing_text >= 1.0:
            problems.append("missing_image + missing_text must be < 1: every post keeps "
                            "at least one modality")
        for name in ("imbalance", "subtopic_spread", "class_separation", "image_noise",
                     "text_noise"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)!r}")
        return problems


@dataclass(frozen=True)
class LoopConfig(_Config):
    """One active-learning run: what is frozen into its run directory.

    ``steps`` is a budget, not part of the science: a resumed run may extend it. The
    compute layout (scoring actors and batch size; ``ComputeConfig``) is not frozen
    either: the query and the metrics do not depend on it.
    """

    pool_uri: str = ""
    val_uri: str = ""
    initial: int = 2000
    steps: int = 100
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
        for name in ("initial", "steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (1 if name == "initial" else 0):
                problems.append(f"{name} must be an integer >= "
                                f"{1 if name == 'initial' else 0}, got {value!r}")
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

    # the budget and the compute layout: a resumed run may change them
    NOT_FROZEN = ("steps", "score.actors", "score.num_cpus_per_actor",
                  "score.num_gpus_per_actor", "score.batch_size")

    def differences(self, other: "LoopConfig") -> list[str]:
        """``key: this -> other`` for every frozen option that differs."""
        mine, theirs = _flatten(self.to_dict()), _flatten(other.to_dict())
        return [f"{key}: {mine.get(key)!r} -> {theirs.get(key)!r}"
                for key in sorted(set(mine) | set(theirs))
                if key not in self.NOT_FROZEN and mine.get(key) != theirs.get(key)]


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and key not in ("modality_dims", "branch_widths",
                                                       "embedding_columns"):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@dataclass(frozen=True)
class ComputeConfig(_Config):
    """Where a loop runs: in-process (``local``) or on Ray (embedded unless ``address``),
    with its Ray Train worker group for fine-tuning."""

    local: bool = False
    address: str | None = None
    train_workers: int = 1
    train_gpus_per_worker: float = 0.0
    train_cpus_per_worker: float | None = None  # None: the training service's default
    train_threads: int | None = None             # torch threads per worker

    def _check(self) -> list[str]:
        problems = []
        if not isinstance(self.train_workers, int) or self.train_workers < 1:
            problems.append(f"train_workers must be an integer >= 1, got {self.train_workers!r}")
        if self.train_gpus_per_worker < 0:
            problems.append("train_gpus_per_worker must be >= 0")
        if self.train_cpus_per_worker is not None and self.train_cpus_per_worker <= 0:
            problems.append("train_cpus_per_worker must be > 0")
        if self.local and self.address:
            problems.append("local and address exclude each other")
        return problems


@dataclass(frozen=True)
class SweepConfig(_Config):
    """A strategy x seed grid (plus any LoopConfig option as a list) on Ray Tune."""

    loop: LoopConfig = field(default_factory=LoopConfig)
    strategies: tuple[str, ...] = ("random", "margin")
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    grid: Mapping[str, tuple] = field(default_factory=dict)  # dotted key -> values
    out: str = ""
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int = 0  # 0: as many trials as the resources allow

    _NESTED = {"loop": LoopConfig}

    def _check(self) -> list[str]:
        problems = []
        if not self.out:
            problems.append("out is required (the sweep's folder)")
        if not self.strategies:
            problems.append("strategies needs at least one strategy")
        if not self.seeds or any(not isinstance(s, int) for s in self.seeds):
            problems.append(f"seeds must be integers, got {self.seeds!r}")
        if len(set(self.seeds)) != len(self.seeds):
            problems.append(f"seeds repeat: {self.seeds!r}")
        known = _flatten(self.loop.to_dict())
        for key, values in self.grid.items():
            if key not in known or key in ("seed", "score.strategies"):
                problems.append(f"grid option {key!r} is not a loop option (strategies and "
                                "seeds have their own lists)")
            if not isinstance(values, (tuple, list)) or not values:
                problems.append(f"grid option {key!r} needs a non-empty list of values")
        if self.cpus_per_trial <= 0 or self.gpus_per_trial < 0:
            problems.append("cpus_per_trial must be > 0 and gpus_per_trial >= 0")
        return problems
