"""Strategy names -> (function, what it needs). The only place strategy names live.

A scorer asks ``needs_of(names)`` which model outputs to compute (each once, however
many strategies use it), puts them in a dict under the keys of ``NEED_INPUTS`` and
calls ``compute_scores(name, inputs)`` per strategy. It never branches on a
strategy's kind. Oracle strategies (``oracle=True``) read the true labels and are
only meaningful in simulation; the pipeline refuses them on a pool without labels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import numpy as np

from alray.acquisition import functions as F
from alray.acquisition.heads import head_disagreement
from alray.errors import ConfigError

# what a strategy may need -> the input keys that provide it
NEED_INPUTS: dict[str, tuple[str, ...]] = {
    "probs": ("probs",),                                 # (n, c), one deterministic pass
    "mc": ("mc_mean_probs", "mc_mean_entropy"),          # (n, c) and (n,), MC dropout
    "loss_pred": ("loss_pred",),                         # (n,), loss-prediction module
    "labels": ("labels",),                               # (n,) int, -1 = unlabelled
    "ids": ("ids", "seed"),                              # (n,) int or str; an int
    "heads": ("head_probs", "head_present"),             # (n, h, c), (n, h) bool; one pass
}


@dataclass(frozen=True)
class Strategy:
    """One acquisition strategy: ``fn(inputs) -> (n,)`` scores, higher = acquire."""

    name: str
    needs: frozenset[str]
    fn: Callable[[Mapping[str, object]], np.ndarray]
    description: str
    oracle: bool = False
    nonnegative: bool = True  # scores never below 0 (power sampling needs it)

    def input_keys(self) -> tuple[str, ...]:
        """The keys of ``inputs`` this strategy reads, in a fixed order."""
        return tuple(k for need in sorted(self.needs) for k in NEED_INPUTS[need])


def _on_mc_mean(fn):
    return lambda x: fn(x["mc_mean_probs"])


_STRATEGIES = (
    Strategy("random", frozenset({"ids"}), lambda x: F.random_scores(x["ids"], x["seed"]),
             "uniform score per id from (seed, id); the passive-learning baseline"),
    Strategy("least_confident", frozenset({"probs"}), lambda x: F.least_confident(x["probs"]),
             "1 - max_y p(y|x)"),
    Strategy("margin", frozenset({"probs"}), lambda x: F.margin(x["probs"]),
             "-(p1 - p2) of the two most likely classes", nonnegative=False),
    Strategy("entropy", frozenset({"probs"}), lambda x: F.entropy(x["probs"]),
             "-sum_y p log p"),
    Strategy("qbc_least_confident", frozenset({"mc"}), _on_mc_mean(F.least_confident),
             "least confident on the MC-dropout mean probabilities"),
    Strategy("qbc_margin", frozenset({"mc"}), _on_mc_mean(F.margin),
             "margin on the MC-dropout mean probabilities", nonnegative=False),
    Strategy("qbc_entropy", frozenset({"mc"}), _on_mc_mean(F.entropy),
             "entropy of the MC-dropout mean probabilities"),
    Strategy("bald", frozenset({"mc"}),
             lambda x: F.bald(x["mc_mean_probs"], x["mc_mean_entropy"]),
             "H(mean of MC samples) - mean of per-sample entropies"),
    Strategy("learning_loss", frozenset({"loss_pred"}), lambda x: F.predicted_loss(x["loss_pred"]),
             "loss predicted by the learning-loss module", nonnegative=False),
    Strategy("ideal_loss", frozenset({"labels", "probs"}),
             lambda x: F.true_loss(x["probs"], x["labels"]),
             "true cross-entropy loss (oracle: needs labels)", oracle=True),
    Strategy("reverse_ideal_loss", frozenset({"labels", "probs"}),
             lambda x: F.reverse_true_loss(x["probs"], x["labels"]),
             "minus the true loss: lowest loss first (oracle: needs labels)", oracle=True,
             nonnegative=False),
    Strategy("head_disagreement", frozenset({"heads"}),
             lambda x: head_disagreement(x["head_probs"], x["head_present"]),
             "Jensen-Shannon divergence of the fused and modality heads (one pass)"),
)

STRATEGIES: Mapping[str, Strategy] = {s.name: s for s in _STRATEGIES}
STRATEGY_NAMES: tuple[str, ...] = tuple(STRATEGIES)
ORACLE_NAMES: tuple[str, ...] = tuple(s.name for s in _STRATEGIES if s.oracle)


def check_names(names: Iterable[str]) -> None:
    """Raise one ConfigError listing every unknown name and the valid ones."""
    if isinstance(names, str):
        names = [names]
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        raise ConfigError(f"unknown strategy {', '.join(map(repr, unknown))}; "
                          f"valid: {', '.join(STRATEGY_NAMES)}")


def get_strategy(name: str) -> Strategy:
    """The Strategy called ``name``; ConfigError listing the valid names otherwise."""
    check_names([name])
    return STRATEGIES[name]


def needs_of(names: Iterable[str]) -> frozenset[str]:
    """Union of what the named strategies need, so each input is computed once."""
    names = [names] if isinstance(names, str) else list(names)
    check_names(names)
    return frozenset().union(*(STRATEGIES[n].needs for n in names))


def input_keys_of(names: Iterable[str]) -> frozenset[str]:
    """Union of the ``inputs`` keys the named strategies read."""
    return frozenset(k for need in needs_of(names) for k in NEED_INPUTS[need])


def compute_scores(name: str, inputs: Mapping[str, object]) -> np.ndarray:
    """``(n,)`` float64 scores of strategy ``name``, higher = acquire.

    ``inputs`` holds at least the keys the strategy needs (see ``NEED_INPUTS``);
    extra keys are ignored. Raises ConfigError for an unknown name, ValueError naming
    missing inputs, and the function's ValueError/LabelsError for bad inputs.
    """
    strategy = get_strategy(name)
    missing = [k for k in strategy.input_keys() if k not in inputs]
    if missing:
        raise ValueError(f"strategy {name!r} needs inputs {', '.join(missing)}; "
                       f"got {', '.join(sorted(inputs)) or 'none'}")
    scores = strategy.fn(inputs)
    assert scores.ndim == 1 and scores.dtype == np.float64, (name, scores.shape, scores.dtype)
    return scores
