"""Acquisition: model outputs -> scores (higher = acquire), and the strategy registry.

numpy only: importing this package never imports torch, Ray or pandas.
"""
from alray.acquisition.functions import (
    bald, candidate_hashes, check_probs, entropy, gumbel_noise, least_confident, margin,
    predicted_loss, random_scores, reverse_true_loss, true_loss)
from alray.acquisition.heads import head_disagreement, least_sure_head
from alray.acquisition.registry import (
    NEED_INPUTS, ORACLE_NAMES, STRATEGIES, STRATEGY_NAMES, Strategy, check_names,
    compute_scores, get_strategy, input_keys_of, needs_of)
from alray.acquisition.sampling import (
    SAMPLING_MODES, check_sampling, rank_keys, sampling_keys)

__all__ = [
    "bald", "check_probs", "entropy", "least_confident", "margin", "predicted_loss",
    "random_scores", "reverse_true_loss", "true_loss", "gumbel_noise", "candidate_hashes",
    "head_disagreement", "least_sure_head",
    "SAMPLING_MODES", "check_sampling", "rank_keys", "sampling_keys",
    "NEED_INPUTS", "ORACLE_NAMES", "STRATEGIES", "STRATEGY_NAMES", "Strategy",
    "check_names", "compute_scores", "get_strategy", "input_keys_of", "needs_of",
]
