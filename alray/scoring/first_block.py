"""The cached first block (``train.freeze_first_block``) of a resident part.

Each branch's first block (image 1024 -> 512, text 300 -> 256 in the study's model) is
most of a pass's arithmetic. When a run keeps it as the passive fit left it, a resident
actor computes its ReLU output ``relu(W1 x + b1)`` once for every row and each step runs
only the layers after it (``FusionNet.forward(..., cached=True)``, ``MCDropout(...,
cached=True)``): the same query, to float rounding. The cache is keyed by a hash of the
first blocks' weights, so other weights never meet it (``first_block_key``).

The raw embeddings are still needed for the query's carried columns (the loop trains
on them), a few hundred rows a step: they are spilled to an unlinked temporary file and
memory-mapped (``spill``), so the part holds the cached outputs in memory and reads the
carried rows' pages from the file.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Mapping

import numpy as np
import pyarrow as pa

from alray.config import PoolConfig
from alray.pool.arrays import PostArrays, pool_table

ROWS = 8192  # rows a chunk when the first blocks are applied


def first_block_key(state: Mapping) -> str:
    """A hash of every branch's first Linear (weights and bias) in a ``model_state``."""
    digest = hashlib.sha256()
    for m in state["architecture"]["modality_dims"]:
        for name in ("weight", "bias"):
            tensor = state["weights"][f"branches.{m}.0.linear.{name}"]
            digest.update(m.encode())
            digest.update(tensor.detach().cpu().float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def first_block_rows(data: PostArrays, state: Mapping, dtype: str, device: str = "cpu"
                     ) -> PostArrays:
    """``data`` with each modality's features replaced by its first block's ReLU output
    (``dtype``: the resident one; on ``device``), computed ``ROWS`` rows at a time."""
    import torch

    from alray.model import load_model

    model, _ = load_model(state, map_location=torch.device(device))
    features = {}
    with torch.inference_mode():
        for m, raw in data.features.items():
            width = model.branches[m][0].linear.out_features
            on_gpu = device != "cpu"
            out = (torch.empty((len(data), width), dtype=getattr(torch, dtype), device=device)
                   if on_gpu else np.empty((len(data), width), dtype))
            for start in range(0, len(data), ROWS):
                x = torch.as_tensor(raw[start:start + ROWS]).to(device, torch.float32)
                h = model.first_activations(m, x)
                out[start:start + ROWS] = h.to(out.dtype) if on_gpu else h.numpy()
            features[m] = out
    return PostArrays(data.ids, features, data.present, data.labels)


def spill(features: Mapping) -> dict[str, np.ndarray]:
    """Each matrix written to a temporary file and memory-mapped read-only; the file is
    unlinked at once (its pages live as long as the map, and nothing is left behind)."""
    mapped = {}
    for m, matrix in features.items():
        matrix = matrix.cpu().numpy() if hasattr(matrix, "cpu") else np.asarray(matrix)
        fd, path = tempfile.mkstemp(prefix=f"alray-raw-{m}-", suffix=".npy")
        os.close(fd)
        try:
            np.save(path, matrix)
            mapped[m] = np.load(path, mmap_mode="r")
        finally:
            os.unlink(path)
    return mapped


def with_carried(table: pa.Table, raw: PostArrays, order: np.ndarray, pool: PoolConfig
                 ) -> pa.Table:
    """``table`` (candidates keyed by ``id``) with the pool columns of its rows from the
    raw embeddings, as the scorer's ``carry`` appends them; ``order``: ``argsort`` of
    ``raw.ids``."""
    ids = table.column("id").to_numpy(zero_copy_only=False)
    at = np.searchsorted(raw.ids, ids, sorter=order)
    rows = order[np.minimum(at, len(order) - 1)] if len(order) else at
    assert len(ids) == 0 or np.array_equal(raw.ids[rows], ids), "a candidate not in the part"
    picked = raw.take(rows)
    picked = PostArrays(picked.ids, {m: np.asarray(f, np.float32)
                                     for m, f in picked.features.items()},
                        picked.present, picked.labels)
    carried = pool_table(picked, pool).drop_columns([pool.id_column])
    for field, column in zip(carried.schema, carried.columns):
        table = table.append_column(field, column)
    return table


__all__ = ["first_block_key", "first_block_rows", "spill", "with_carried"]
