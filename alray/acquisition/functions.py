"""Acquisition functions: model outputs in, one score per post out, HIGHER = ACQUIRE.

Every function is pure and vectorized: arrays in, a ``(n,)`` float64 array out, no
state, no I/O. ``n`` is the number of posts, ``c`` the number of classes. Inputs that
are not probabilities raise ``ValueError`` naming what is wrong; they are never
silently softmaxed. Scores are computed in float64 whatever the input dtype, so
float32 model outputs do not create spurious ties.
"""
from __future__ import annotations

import numpy as np

from alray.errors import LabelsError
from alray.pool import UNLABELLED

# float32 softmax rows sum to 1 within ~1e-6; 1e-3 also admits float16/AMP outputs
ROW_SUM_TOL = 1e-3
# p is clamped here before -log p, so a confident wrong prediction scores ~27.6, not inf
LOG_EPS = 1e-12
# BALD = H(mean) - mean H >= 0 by Jensen; float32 rounding can push it a little below 0
BALD_ROUNDING_TOL = 1e-4


def check_probs(probs, name: str = "probs") -> np.ndarray:
    """Return ``probs`` ``(n, c)`` as float64 after checking it holds probabilities.

    Raises ValueError ("... not probabilities ...") if it is not 2-D, has no class,
    holds NaN/inf or values outside [0, 1], or a row does not sum to 1 within
    ``ROW_SUM_TOL``. Three vectorized reductions; no per-row Python.
    """
    p = np.asarray(probs)
    if p.ndim != 2 or p.shape[1] == 0:
        raise ValueError(f"{name} are not probabilities: expected shape (n, classes), "
                         f"got {p.shape}")
    if p.dtype.kind not in "fiub":
        raise ValueError(f"{name} are not probabilities: dtype {p.dtype}")
    p = p.astype(np.float64, copy=False)
    if p.size == 0:
        return p
    lo, hi = p.min(), p.max()
    if not (lo >= 0.0 and hi <= 1.0):  # also false when lo or hi is NaN
        n_bad = int(np.count_nonzero(~np.isfinite(p)))
        if n_bad:
            raise ValueError(f"{name} are not probabilities: {n_bad} values are NaN or inf")
        n_out = int(np.count_nonzero((p < 0) | (p > 1)))
        raise ValueError(f"{name} are not probabilities: {n_out} values outside [0, 1] "
                         f"(min {lo:.4g}, max {hi:.4g}); pass softmax outputs, not logits")
    off = np.abs(p.sum(axis=1) - 1.0)
    n_off = int(np.count_nonzero(off > ROW_SUM_TOL))
    if n_off:
        raise ValueError(f"{name} are not probabilities: {n_off} of {len(p)} rows do not "
                         f"sum to 1 (worst off by {off.max():.4g}, tolerance {ROW_SUM_TOL})")
    return p


def _check_vector(values, name: str, n: int | None = None) -> np.ndarray:
    """``(n,)`` finite float64 copy of ``values``; ``(n, 1)`` is accepted and flattened."""
    v = np.asarray(values)
    if v.ndim == 2 and v.shape[1] == 1:
        v = v[:, 0]
    if v.ndim != 1 or v.dtype.kind not in "fiub":
        raise ValueError(f"{name} must be a numeric (n,) array, got shape {v.shape} "
                         f"dtype {v.dtype}")
    if n is not None and len(v) != n:
        raise ValueError(f"{name} has {len(v)} rows, expected {n}")
    v = v.astype(np.float64, copy=False)
    n_bad = int(np.count_nonzero(~np.isfinite(v)))
    if n_bad:
        raise ValueError(f"{name} has {n_bad} NaN or inf values")
    return v


def least_confident(probs) -> np.ndarray:
    """``1 - max_y p(y|x)``. probs: ``(n, c)``. Returns ``(n,)`` in [0, 1 - 1/c]."""
    p = check_probs(probs)
    return 1.0 - p.max(axis=1)


def margin(probs) -> np.ndarray:
    """``-(p1 - p2)``, p1 >= p2 the two largest probabilities: the smallest margin
    gets the highest score. probs: ``(n, c)`` with c >= 2. Returns ``(n,)`` in [-1, 0].
    """
    p = check_probs(probs)
    if p.shape[1] < 2:
        raise ValueError(f"margin needs at least 2 classes, probs has {p.shape[1]}")
    top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]  # O(n c), no full sort
    return top2[:, 0] - top2[:, 1]


def entropy_rows(p: np.ndarray) -> np.ndarray:
    """``-sum p log p`` per row of a checked ``(n, c)`` float64 array; 0 log 0 = 0."""
    logs = np.zeros_like(p)
    np.log(p, out=logs, where=p > 0)
    return -(p * logs).sum(axis=1)


def entropy(probs) -> np.ndarray:
    """Shannon entropy in nats. probs: ``(n, c)``. Returns ``(n,)`` in [0, log c]."""
    return entropy_rows(check_probs(probs))


def bald(mean_probs, mean_entropy) -> np.ndarray:
    """Mutual information of an MC-dropout committee: ``H(mean_j p_j) - mean_j H(p_j)``.

    mean_probs: ``(n, c)``, the average over the MC samples of the predicted
    probabilities. mean_entropy: ``(n,)``, the average over the same samples of each
    sample's entropy (nats). Returns ``(n,)`` >= 0.

    By Jensen the result is >= 0 when both inputs come from the same samples. Values
    in ``[-BALD_ROUNDING_TOL, 0)`` are float rounding and become 0; anything below
    that means the inputs disagree (other samples, other units, a bug) and raises
    ValueError, because clipping it would hide the error.
    """
    p = check_probs(mean_probs, "mean_probs")
    h_each = _check_vector(mean_entropy, "mean_entropy", len(p))
    n_neg = int(np.count_nonzero(h_each < 0))
    if n_neg:
        raise ValueError(f"mean_entropy has {n_neg} negative values; entropies are >= 0")
    scores = entropy_rows(p) - h_each
    real = scores < -BALD_ROUNDING_TOL
    if real.any():
        raise ValueError(
            f"bald: {int(real.sum())} posts have mean_entropy above the entropy of "
            f"mean_probs (worst by {-scores.min():.4g} nats); the two inputs must come "
            "from the same MC samples, in nats")
    return np.maximum(scores, 0.0)


def predicted_loss(loss_pred) -> np.ndarray:
    """The loss-prediction module's output as the score (higher predicted loss =
    acquire). loss_pred: ``(n,)`` or ``(n, 1)``, finite, any sign (the module is
    trained with a ranking loss, so only the order matters). Returns ``(n,)``.
    """
    return _check_vector(loss_pred, "loss_pred")


def true_loss(probs, labels) -> np.ndarray:
    """Cross-entropy with the true label, ``-log max(p[label], LOG_EPS)``: the oracle
    behind the ``ideal_loss`` strategy (simulation only).

    probs: ``(n, c)``. labels: ``(n,)`` integer in [0, c), ``UNLABELLED`` (-1) for
    posts without a label. Raises LabelsError if any label is -1 and ValueError if a
    label is out of range. Returns ``(n,)`` in [0, -log LOG_EPS].
    """
    p = check_probs(probs)
    y = np.asarray(labels)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise ValueError(f"labels must be an integer (n,) array, got shape {y.shape} "
                         f"dtype {y.dtype}")
    if len(y) != len(p):
        raise ValueError(f"labels has {len(y)} rows, probs has {len(p)}")
    n_missing = int(np.count_nonzero(y == UNLABELLED))
    if n_missing:
        raise LabelsError(f"ideal_loss needs true labels; {n_missing} posts in the batch "
                          f"have none (label {UNLABELLED})")
    bad = (y < 0) | (y >= p.shape[1])
    if bad.any():
        raise ValueError(f"{int(bad.sum())} labels outside [0, {p.shape[1]}), "
                         f"e.g. {y[bad][0]}")
    picked = p[np.arange(len(p)), y]
    return -np.log(np.maximum(picked, LOG_EPS))


def reverse_true_loss(probs, labels) -> np.ndarray:
    """``-true_loss``: acquire the posts the model already fits best (the study's
    reverse ideal loss). Shapes and errors as ``true_loss``.
    """
    return -true_loss(probs, labels)


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer on a uint64 array (wrapping arithmetic is intended)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _check_seed(seed, name: str = "seed") -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {seed!r}")
    return int(seed)


def _hash_ids(ids, key: np.uint64) -> np.ndarray:
    """``(n,)`` uint64 hash of each id under ``key``: a function of (key, id) only."""
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"ids must be a (n,) array, got shape {ids.shape}")
    if ids.dtype.kind in "iu":
        return _splitmix64(ids.astype(np.int64, copy=False).view(np.uint64) ^ key)
    if ids.dtype.kind in "UO":
        from pandas.util import hash_array  # strings only; keeps pandas off import
        return hash_array(ids.astype(object, copy=False), hash_key=f"{int(key):016x}",
                          categorize=False)
    raise ValueError(f"ids must be integers or strings, got dtype {ids.dtype}")


def _key_of(*parts: int) -> np.uint64:
    """One 64-bit hash key from several integers (seed, stream, step), chained."""
    key = np.uint64(0)
    for part in parts:
        key = _splitmix64(np.array([key ^ np.uint64(part % 2**64)], dtype=np.uint64))[0]
    return key


def random_scores(ids, seed: int) -> np.ndarray:
    """A uniform score in [0, 1) per post, a function of (seed, id) only.

    ids: ``(n,)`` integers or strings. The score of an id does not depend on the
    batch it arrives in, its position or the other ids, so a streamed pool and a
    full pool rank the same posts first. Integer ids (taken as int64) go through
    splitmix64 keyed by the seed; string ids through pandas' SipHash
    (``pandas.util.hash_array``) with a 16-character key derived from the seed (pandas
    is imported only then). Returns ``(n,)`` float64 from the top 53 bits.
    """
    key = _splitmix64(np.array([_check_seed(seed) % 2**64], dtype=np.uint64))[0]
    bits = _hash_ids(ids, key)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


# keeps the Gumbel stream apart from the ``random`` strategy's scores under one seed
_GUMBEL_STREAM = 0x67756D62656C  # "gumbel"
_CANDIDATE_STREAM = 0x63616E64  # "cand": candidate subsets independent of the noise


def candidate_hashes(ids, seed: int, step: int = 0) -> np.ndarray:
    """``(n,)`` uint64 per post, a function of (seed, step, id): the posts with the N
    smallest values are a uniform random subset of N (``--candidates``), the same
    whatever the batching, and a new one each step."""
    key = _key_of(_check_seed(seed), _CANDIDATE_STREAM, _check_seed(step, "step"))
    return _hash_ids(ids, key)


def gumbel_noise(ids, seed: int, step: int = 0) -> np.ndarray:
    """Standard Gumbel noise ``-log(-log u)`` per post, a function of (seed, step, id).

    ids: ``(n,)`` integers or strings. ``u`` is the hash's top 53 bits mapped to the
    open interval (0, 1) (``(m + 0.5) / 2**53``), so the noise is finite: within about
    [-3.6, 37.4]. Like ``random_scores`` it ignores batching; a new ``step`` gives
    fresh noise for every id. Returns ``(n,)`` float64.
    """
    key = _key_of(_check_seed(seed), _GUMBEL_STREAM, _check_seed(step, "step"))
    bits = _hash_ids(ids, key)
    u = ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 2**53)
    return -np.log(-np.log(u))
