"""alray: active learning on Ray.

The public API is re-exported here lazily, so ``import alray`` (and ``alray.model``,
``alray.acquisition``, ``alray.pool``) never imports Ray or torch until a name that needs
them is used.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    # configuration and errors
    "PoolConfig": "alray.config", "ModelConfig": "alray.config", "TrainConfig": "alray.config",
    "ScoreConfig": "alray.config", "GeneratorConfig": "alray.pool.synthetic",
    "LoopConfig": "alray.config", "ComputeConfig": "alray.config",
    "AlrayError": "alray.errors", "ConfigError": "alray.errors",
    "PoolSchemaError": "alray.errors", "EmptyPoolError": "alray.errors",
    "PoolExhaustedError": "alray.errors", "LabelsError": "alray.errors",
    "CheckpointError": "alray.errors", "StateError": "alray.errors",
    # pools
    "validate_pool": "alray.pool.validate", "generate_pool": "alray.pool.synthetic",
    "arrays_from_table": "alray.pool.arrays", "PostArrays": "alray.pool.arrays",
    # model and training
    "FusionNet": "alray.model", "MultiHeadLoss": "alray.model", "mc_statistics": "alray.model",
    "save_checkpoint": "alray.model", "load_checkpoint": "alray.model",
    "fit": "alray.train", "fine_tune": "alray.train", "evaluate": "alray.train",
    "adaptive_batch_size": "alray.train",
    # acquisition
    "compute_scores": "alray.acquisition", "STRATEGY_NAMES": "alray.acquisition",
    "TopK": "alray.scoring.topk", "score_pool": "alray.scoring.pipeline",
    # the loop
    "RunDir": "alray.loop", "new_run": "alray.loop", "reopen_run": "alray.loop",
    "run_loop": "alray.loop", "import_labels": "alray.loop",
    # experiments
    "run_sweep": "alray.experiments.sweep", "run_correlation": "alray.experiments.correlation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'alray' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
