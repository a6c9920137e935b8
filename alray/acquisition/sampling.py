"""Stochastic batch acquisition (Kirsch et al. 2023) as Gumbel-top-k.

Taking the top k of ``log w_i + G_i``, with ``G_i`` i.i.d. standard Gumbel noise, draws
k posts without replacement with probabilities proportional to ``w_i`` (a
Plackett-Luce sample). The noise of a post is a pure function of (seed, step, id)
(``functions.gumbel_noise``), so the perturbed score is a per-row score like any other:
the per-batch top-k and the exact merge on the driver give the same sample as drawing
centrally from the whole pool, whatever the batch size, block size or actor count.

Modes (``ScoreConfig.sampling``), with ``s`` the strategy's score and ``beta`` the
inverse temperature (``ScoreConfig.sampling_beta``):

- ``top``: ``s`` itself, the deterministic top k (beta unused).
- ``softmax``: ``w = exp(beta s)``; the key is ``beta s + G``. Any score.
- ``power``: ``w = s ** beta``; the key is ``beta log s + G`` for ``s > 0``. Posts with
  ``s <= 0`` have weight 0: they come after every post with ``s > 0``, in a uniform
  random order among themselves (their key is ``G`` shifted below every possible
  positive key), so a query is still full when fewer than k posts score above 0.
  Strategies whose scores can be negative (margin, learning_loss, reverse_ideal_loss)
  are refused: a power of a negative score has no meaning.
- ``rank``: ``w = r ** -beta`` with ``r`` the post's rank in the whole pool (1 = best).
  The rank is global, so it cannot be known per row. For beta = 1 the weight beyond
  rank M is ``log(N / M) / log N`` of the total (N posts): about 40 % beyond rank 1,000
  in a 250k pool, so no bounded candidate set provably holds the sample. It is exact
  only when every score reaches the driver (``alray score --scores-out``), where
  ``rank_keys`` ranks the whole pool; the streaming path refuses it.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from alray.acquisition.functions import gumbel_noise
from alray.acquisition.registry import STRATEGIES
from alray.errors import ConfigError

SAMPLING_MODES = ("top", "softmax", "power", "rank")
# the Gumbel noise of gumbel_noise lies within [-3.62, 37.42], and log of the smallest
# positive float64 is -744.4: a shift of 750 beta + 50 puts every zero-weight key
# below every positive-weight key
_LOG_TINY, _NOISE_SPAN = 750.0, 50.0


def check_sampling(names: Iterable[str], sampling: str, streaming: bool = True) -> None:
    """Raise ConfigError when ``sampling`` cannot serve the named strategies.

    ``streaming``: the query is merged from per-batch candidates (rank sampling is
    impossible there, see the module docstring).
    """
    if sampling not in SAMPLING_MODES:
        raise ConfigError(f"sampling {sampling!r}: expected one of {', '.join(SAMPLING_MODES)}")
    if sampling == "rank" and streaming:
        raise ConfigError(
            "rank sampling needs every post's global rank, which per-batch candidates "
            "cannot give; score with --scores-out (every score reaches the driver) or "
            "use softmax or power sampling")
    if sampling == "power":
        signed = [n for n in names if not STRATEGIES[n].nonnegative]
        if signed:
            raise ConfigError(
                f"power sampling needs scores >= 0; {', '.join(signed)} can score below 0 "
                "(use softmax sampling for them)")


def sampling_keys(scores: np.ndarray, ids, sampling: str, beta: float, seed: int,
                  step: int = 0) -> np.ndarray:
    """The key ranked in place of the score: ``(n,)`` float64 from ``(n,)`` scores/ids.

    Per row only (``top``, ``softmax``, ``power``); ``rank`` goes through ``rank_keys``.
    """
    if sampling == "top":
        return scores
    noise = gumbel_noise(ids, seed, step)
    if sampling == "softmax":
        return beta * scores + noise
    if sampling == "power":
        return _power_keys(scores, noise, beta)
    raise ValueError(f"sampling {sampling!r} is not a per-row key (see rank_keys)")


def _power_keys(scores: np.ndarray, noise: np.ndarray, beta: float) -> np.ndarray:
    keys = noise - (beta * _LOG_TINY + _NOISE_SPAN)  # weight 0: after every positive row
    positive = scores > 0
    keys[positive] = beta * np.log(scores[positive]) + noise[positive]
    return keys


def rank_keys(scores: np.ndarray, ids, beta: float, seed: int, step: int = 0
              ) -> np.ndarray:
    """Rank-sampling keys ``-beta log r + G`` over a WHOLE pool: ``(n,)`` from ``(n,)``.

    ``r`` is the rank by (score descending, id ascending), 1 = best: the same total
    order as the deterministic top k.
    """
    ids = np.asarray(ids)
    order = np.lexsort((ids, -scores))
    ranks = np.empty(len(scores), np.float64)
    ranks[order] = np.arange(1, len(scores) + 1)
    return -beta * np.log(ranks) + gumbel_noise(ids, seed, step)
