"""Every science and compute option, declared once, with its default read from the
config dataclasses.

A concept has one option name and one default in every command: ``alray loop``, ``alray
sweep`` (where an option not given falls back to the experiment file, then to the
dataclass), ``alray score``, ``alray train`` and ``alray serve`` take the options they
need from these lists. ``overrides`` turns the options a user gave into dotted config
keys (``score.query_size``), the form ``apply_overrides``, ``--set`` and the experiment
files use.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import click

from alray.config import DEFAULT_STEPS, ComputeConfig, LoopConfig

SEED_KEYS = ("seed", "train.seed", "score.seed")  # one --seed seeds every stream


@dataclass(frozen=True)
class Option:
    """One option: click's parameter ``name``, the dotted config ``key`` it sets
    (``compute.*`` for ``ComputeConfig``), its flag(s), help and click type."""

    name: str
    key: str
    flags: str
    help: str = ""
    type: object = None

    @property
    def default(self):
        return default_of(self.key)

    def decorator(self, with_default: bool = True):
        default = self.default if with_default else None
        shown = "" if with_default or self.default in (None, False) else \
            f" [default: {_shown(self.default)}]"
        kind = self.type
        if kind is None and not isinstance(self.default, bool) and self.default is not None:
            kind = type(self.default)
        if isinstance(self.default, bool) and "/" not in self.flags:
            return click.option(self.flags, self.name, is_flag=True,
                                default=default if with_default else None,
                                help=self.help + shown)
        if isinstance(self.default, tuple):  # strategies: a comma-separated list
            kind, default = str, ",".join(default) if default else None
        return click.option(self.flags, self.name, type=kind, default=default,
                            show_default=with_default and self.default is not None,
                            help=self.help + shown)


class CandidatesType(click.ParamType):
    """--candidates: a count (an int) or ``knn:K`` (a string ScoreConfig checks)."""

    name = "N|knn:K"

    def convert(self, value, param, ctx):
        text = str(value).strip()
        return int(text) if text.isdigit() else text


def _shown(value) -> str:
    return ",".join(value) if isinstance(value, tuple) else str(value)


def default_of(key: str):
    """The dataclass default of a dotted key (``score.mc_samples`` -> 20)."""
    if key == "steps":
        return DEFAULT_STEPS
    cls, parts = LoopConfig, key.split(".")
    if parts[0] == "compute":
        cls, parts = ComputeConfig, parts[1:]
    for part in parts[:-1]:
        cls = _field(cls, part).default_factory
    field = _field(cls, parts[-1])
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory()


def _field(cls, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(cls) if f.name == name)


CHOICE = click.Choice
SCIENCE = (
    Option("strategy", "score.strategies", "--strategy",
           "Acquisition strategy (alray score, sweep: several, comma-separated)."),
    Option("initial", "initial", "--initial", "Size of the seeded random initial set."),
    Option("initial_strategy", "initial_strategy", "--initial-strategy",
           "random: a seeded uniform draw (the study's); typiclust: the most typical "
           "labelled post of each of --initial clusters (TypiClust).",
           CHOICE(["random", "typiclust"])),
    Option("query_size", "score.query_size", "--query-size", "Posts per query."),
    Option("seed", "seed", "--seed", "The run's seed (initial set, weights, masks)."),
    Option("classes", "model.n_classes", "--classes",
           "Class count [default: inferred from the labels].", int),
    Option("mc_samples", "score.mc_samples", "--mc-samples",
           "MC-dropout samples (qbc_*, bald)."),
    Option("head", "score.head", "--head", "Head to score with."),
    Option("heads", "model.heads", "--heads", "multi: one head per modality and the "
           "fused one (the study's); fused: the fused head alone.",
           CHOICE(["multi", "fused"])),
    Option("dropout", "model.dropout", "--dropout", "Dropout probability of every block."),
    Option("learning_loss", "model.learning_loss", "--learning-loss",
           "Train a loss-prediction module (strategy learning_loss)."),
    Option("epochs", "train.epochs", "--epochs", "Epochs of the passive fit."),
    Option("fine_tune_epochs", "train.fine_tune_epochs", "--fine-tune-epochs",
           "Epochs of each active-phase fine-tune."),
    Option("lr", "train.lr", "--lr", "Adam's learning rate."),
    Option("weight_decay", "train.weight_decay", "--weight-decay", "Adam's weight decay."),
    Option("batch_size", "train.batch_size", "--batch-size", "Training batch size b."),
    Option("adaptive_batch", "train.adaptive_batch", "--adaptive-batch/--fixed-batch",
           "The study's adaptive batch size (no tiny last batch)."),
    Option("freeze_batchnorm", "train.freeze_batchnorm",
           "--freeze-batchnorm/--no-freeze-batchnorm",
           "Keep batch-norm statistics frozen in the active phase."),
    Option("freeze_first_block", "train.freeze_first_block",
           "--freeze-first-block/--no-freeze-first-block",
           "Keep each branch's first block (Linear and batch norm) as the passive fit "
           "left it in the active phase; the resident pool then caches its outputs."),
    Option("loss_weighting", "train.loss_weighting", "--loss-weighting",
           "learned: Kendall et al.'s weights of the three heads; equal: a plain sum.",
           CHOICE(["learned", "equal"])),
    Option("sampling", "score.sampling", "--sampling",
           "top: the best scores; softmax/power/rank: a seeded stochastic batch "
           "(Gumbel-top-k; rank needs --scores-out in alray score).",
           CHOICE(["top", "softmax", "power", "rank"])),
    Option("sampling_beta", "score.sampling_beta", "--sampling-beta",
           "Inverse temperature of stochastic sampling."),
    Option("class_balance", "score.class_balance", "--class-balance",
           "Share of the query: rounds over predicted classes, each class at most "
           "ceil(share x query size) posts before the best remaining fill it; 0 = off."),
    Option("candidates", "score.candidates", "--candidates",
           "Score only a seeded random subset of this many unlabelled posts (new each "
           "step); knn:K: only the K nearest neighbours of every labelled post (needs "
           "--neighbours); 0 = the whole pool.", CandidatesType()),
    Option("neighbours", "score.neighbours", "--neighbours",
           "The pool's nearest-neighbour graph (a file from alray neighbours), for "
           "--candidates knn:K.", str),
    Option("cluster_margin", "score.cluster_margin", "--cluster-margin",
           "Cluster-Margin: fill the query round-robin over the clusters of the best "
           "X x query-size candidates, smallest cluster first; 0 = off (needs --clusters)."),
    Option("clusters", "score.clusters", "--clusters",
           "The pool's clustering (a file from alray cluster), for --cluster-margin.", str),
)
COMPUTE = (
    Option("local", "compute.local", "--local", "In this process, without Ray."),
    Option("address", "compute.address", "--address",
           "Ray cluster address [default: the embedded Ray].", str),
    Option("actors", "compute.score_actors", "--actors", "Scoring actors."),
    Option("num_cpus_per_actor", "compute.score_cpus_per_actor", "--num-cpus-per-actor",
           "CPUs per scoring actor [default: 0.5 on the embedded Ray, else 1].", float),
    Option("num_gpus_per_actor", "compute.score_gpus_per_actor", "--num-gpus-per-actor",
           "GPUs per scoring actor."),
    Option("score_batch_size", "compute.score_batch_size", "--score-batch-size",
           "Rows per scoring batch."),
    Option("train_workers", "compute.train_workers", "--train-workers",
           "Ray Train workers (data parallel)."),
    Option("train_gpus_per_worker", "compute.train_gpus_per_worker",
           "--train-gpus-per-worker", "GPUs per training worker."),
    Option("train_cpus_per_worker", "compute.train_cpus_per_worker",
           "--train-cpus-per-worker", "CPUs per training worker [default: 0.5].", float),
    Option("resident", "compute.resident", "--resident/--streaming",
           "Loops on Ray: the scoring actors keep their part of the pool in memory "
           "across steps (read once; streaming if it does not fit); --streaming: read "
           "the pool through Ray Data every step."),
    Option("resident_dtype", "compute.resident_dtype", "--resident-dtype",
           "How the resident pool holds vectors: float16 halves the memory and rounds "
           "float32 vectors (the query may move by that rounding).",
           CHOICE(["float32", "float16"])),
    Option("resident_memory", "compute.resident_memory_mb", "--resident-memory",
           "MB the resident pool may take on each node [default: half the node's Ray "
           "memory].", int),
)
STEPS = Option("steps", "steps", "--steps", "Steps after the passive one.")
BY_NAME = {o.name: o for o in (*SCIENCE, *COMPUTE, STEPS)}
SCORE_SCIENCE = ("strategy", "query_size", "seed", "mc_samples", "head", "sampling",
                 "sampling_beta", "class_balance", "candidates", "neighbours", "cluster_margin",
                 "clusters")
TRAIN_SCIENCE = ("initial", "initial_strategy", "seed", "classes", "heads", "dropout", "learning_loss",
                 "epochs", "lr", "weight_decay", "batch_size", "adaptive_batch",
                 "loss_weighting")
SCORE_COMPUTE = ("local", "address", "actors", "num_cpus_per_actor", "num_gpus_per_actor",
                 "score_batch_size")


def options(names, with_default: bool = True):
    """A decorator adding the options called ``names`` (in that order) to a command."""
    def decorate(fn):
        for name in reversed(list(names)):
            fn = BY_NAME[name].decorator(with_default)(fn)
        return fn
    return decorate


def overrides(params: dict, names) -> dict:
    """Dotted config keys of the options ``names`` whose value in ``params`` is not
    None (``compute.*`` keys left out): the strategy list split, --seed on every
    stream."""
    out = {}
    for name in names:
        option, value = BY_NAME[name], params.get(name)
        if value is None or option.key.startswith("compute.") or option.key == "steps":
            continue
        if option.key == "score.strategies":
            value = tuple(s.strip() for s in str(value).split(",") if s.strip())
        for key in (SEED_KEYS if option.key == "seed" else (option.key,)):
            out[key] = value
    return out


def compute_config(params: dict) -> ComputeConfig:
    """The ComputeConfig of the compute options in ``params`` (absent ones: defaults)."""
    values = {BY_NAME[name].key.split(".", 1)[1]: params[name]
              for name in BY_NAME if BY_NAME[name].key.startswith("compute.")
              and params.get(name) is not None}
    return ComputeConfig(**values)


__all__ = ["COMPUTE", "SCIENCE", "SCORE_COMPUTE", "SCORE_SCIENCE", "STEPS", "TRAIN_SCIENCE",
           "Option", "compute_config", "default_of", "options", "overrides"]
