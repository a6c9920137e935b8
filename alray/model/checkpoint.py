"""Model checkpoints: a directory that alone rebuilds the model.

Layout (docs/model.md)::

    <path>/model.json        format, version, architecture (ModelConfig.to_dict()),
                             n_classes, modality_dims, extra (plain JSON data)
    <path>/weights.pt        the model's state_dict (tensors only)
    <path>/train_state.pt    optional: the Trainer's loss and optimizer state

Saving writes a complete temporary directory next to ``path`` first (each file and the
directory fsynced); only then is an existing checkpoint moved aside and the new one
renamed into place, and the parent directory fsynced: once saved, a power cut keeps it.
Loading uses ``torch.load(weights_only=True)``: a checkpoint never executes code.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from alray.config import ModelConfig
from alray.errors import CheckpointError, ConfigError
from alray.model.fusion import FusionNet
from alray.pool.io import fsync_dir

FORMAT = "alray.model"
VERSION = 1
MODEL_JSON = "model.json"
WEIGHTS = "weights.pt"
TRAIN_STATE = "train_state.pt"


def _backup(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def save_checkpoint(path: str | Path, model: FusionNet, config: ModelConfig,
                    extra: Mapping[str, Any] | None = None,
                    train_state: Mapping[str, Any] | None = None) -> Path:
    """Write the checkpoint directory ``path`` atomically; returns it.

    ``extra``: JSON-serialisable data stored in model.json (e.g. step, metrics).
    ``train_state``: ``Trainer.state_dict()`` to resume the optimizer.
    """
    path = Path(path)
    if model.config != config:
        raise ValueError("save_checkpoint: config differs from the model's own config")
    check_finite_weights(model.state_dict(), str(path))
    meta = {"format": FORMAT, "version": VERSION, "architecture": config.to_dict(),
            "n_classes": config.n_classes, "modality_dims": dict(config.modality_dims),
            "extra": dict(extra or {})}
    text = json.dumps(meta, indent=2, sort_keys=True)  # fails early on non-JSON extra
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        _write(tmp / WEIGHTS, lambda f: torch.save(model.state_dict(), f))
        if train_state is not None:
            _write(tmp / TRAIN_STATE, lambda f: torch.save(dict(train_state), f))
        _write(tmp / MODEL_JSON, lambda f: f.write(text.encode()))
        _swap_in(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def check_finite_weights(state: Mapping[str, Any], where: str) -> None:
    """Refuse weights holding a NaN or an infinity: such a model would be saved, loaded
    and scored with plausible-looking numbers (CheckpointError naming the tensors)."""
    bad = [name for name, tensor in state.items()
           if torch.is_tensor(tensor) and tensor.is_floating_point()
           and not bool(torch.isfinite(tensor).all())]
    if bad:
        raise CheckpointError(
            f"checkpoint {where}: not written: the model's weights hold NaN or infinite "
            f"values ({', '.join(bad[:5])}{' and more' if len(bad) > 5 else ''}); the "
            "training diverged or its inputs had non-finite values")


def _write(file: Path, writer) -> None:
    with open(file, "wb") as f:
        writer(f)
        f.flush()
        os.fsync(f.fileno())


def _swap_in(tmp: Path, path: Path) -> None:
    """Replace ``path`` by the complete directory ``tmp``.

    A directory cannot be renamed over a non-empty one, so the old checkpoint is first
    renamed to ``.<name>.old`` (kept until the new one is in place: an interrupted save
    leaves either the old or the new checkpoint, and ``load_checkpoint`` names the
    backup if ``path`` itself is gone)."""
    backup = _backup(path)
    if backup.exists():
        shutil.rmtree(backup)
    fsync_dir(tmp)  # its files' entries, before the directory can be found under ``path``
    if path.exists():
        os.replace(path, backup)
    os.replace(tmp, path)
    fsync_dir(path.parent)  # the renames
    shutil.rmtree(backup, ignore_errors=True)


def read_model_json(path: str | Path) -> dict:
    """The parsed model.json of checkpoint ``path``; CheckpointError when unusable."""
    path = Path(path)
    file = path / MODEL_JSON
    if not path.is_dir():
        hint = f" (an interrupted save left {_backup(path)})" if _backup(path).exists() else ""
        raise CheckpointError(f"checkpoint {path} does not exist or is not a directory{hint}")
    try:
        meta = json.loads(file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: missing {MODEL_JSON}") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path}: cannot read {MODEL_JSON}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: {MODEL_JSON} is not an alray model file")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path}: format version {meta.get('version')!r}, "
                              f"this alray reads version {VERSION}")
    return meta


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"
                    ) -> tuple[FusionNet, ModelConfig, dict]:
    """Rebuild the model (eval mode) from ``path`` -> ``(model, config, extra)``."""
    path = Path(path)
    meta = read_model_json(path)
    try:
        config = ModelConfig.from_dict(meta["architecture"])
    except (KeyError, TypeError, ConfigError) as exc:
        raise CheckpointError(f"checkpoint {path}: bad architecture in {MODEL_JSON}: "
                              f"{exc}") from None
    state = _load_tensors(path / WEIGHTS, map_location)
    model = model_from_state(config, state, f"checkpoint {path}: {WEIGHTS}", map_location)
    return model, config, dict(meta.get("extra") or {})


def model_state(model: FusionNet) -> dict:
    """The model as plain data (architecture and CPU weights): what travels to scoring
    actors through Ray's object store, so no node but the driver reads the checkpoint."""
    return {"architecture": model.config.to_dict(),
            "weights": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def load_model(source: str | Path | Mapping, map_location: str | torch.device = "cpu"
               ) -> tuple[FusionNet, ModelConfig]:
    """The model (eval mode) and its config from a checkpoint path or a ``model_state``."""
    if isinstance(source, Mapping):
        config = ModelConfig.from_dict(source["architecture"])
        return model_from_state(config, source["weights"], "model state", map_location), config
    model, config, _ = load_checkpoint(source, map_location)
    return model, config


def model_from_state(config: ModelConfig, weights: Mapping[str, torch.Tensor],
                     source: str = "weights", map_location: str | torch.device = "cpu"
                     ) -> FusionNet:
    """The model (eval mode) of architecture ``config`` with ``weights`` (a state_dict);
    CheckpointError naming ``source`` when they do not match."""
    model = FusionNet(config)
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{source} does not match the architecture "
                              f"{config.to_dict()}: {exc}") from None
    return model.to(map_location).eval()


def load_train_state(path: str | Path, map_location: str | torch.device = "cpu"
                     ) -> dict | None:
    """The saved ``Trainer.state_dict()``, or None when the checkpoint has none."""
    file = Path(path) / TRAIN_STATE
    if not file.exists():
        return None
    return _load_tensors(file, map_location)


def _load_tensors(file: Path, map_location) -> dict:
    if not file.exists():
        raise CheckpointError(f"checkpoint {file.parent}: missing {file.name}")
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/garbled files
        raise CheckpointError(f"checkpoint {file.parent}: cannot load {file.name} "
                              f"({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {file.parent}: {file.name} holds "
                              f"{type(state).__name__}, expected a dict")
    return state


def check_fits(config: ModelConfig, dims: Mapping[str, int], n_classes: int | None,
               source: str) -> None:
    """Raise CheckpointError naming both sides when the model from ``source`` (e.g. a
    checkpoint path) cannot take a pool with modality ``dims`` and labels needing
    ``n_classes`` classes (max label + 1; None = unknown)."""
    problems = []
    want = dict(config.modality_dims)
    for m in sorted(set(want) | set(dims)):
        if m not in dims:
            problems.append(f"model from {source} expects modality {m!r} (dim {want[m]}), "
                            f"the pool has none (pool modalities: {sorted(dims)})")
        elif m not in want:
            problems.append(f"the pool has modality {m!r} (dim {dims[m]}), the model from "
                            f"{source} has none (model modalities: {sorted(want)})")
        elif int(dims[m]) != want[m]:
            problems.append(f"modality {m!r}: model from {source} expects dim {want[m]}, "
                            f"the pool has dim {dims[m]}")
    if n_classes is not None and n_classes > config.n_classes:
        problems.append(f"model from {source} predicts {config.n_classes} classes, "
                        f"the pool's labels need {n_classes}")
    if problems:
        raise CheckpointError(problems[0] if len(problems) == 1 else
                              f"{len(problems)} problems", problems)
