"""A real data set as a two-view pool: scikit-learn's handwritten digits (8x8 images).

The study checked its strategies on MNIST; this is the same sanity check on data that
ships inside a package (no download). Each digit becomes a post with two "modalities":
the left and the right half of the image (32 pixels each, scaled to [0, 1]). A seeded
share of posts loses one half, as posts lose an image or a text. 1,797 digits: a
seeded validation split, the rest the pool.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from alray import seeds
from alray.errors import ConfigError
from alray.pool import io
from alray.pool.synthetic import fixed_list_array


def digits_tables(seed: int = 0, val_share: float = 0.2, missing: float = 0.1
                  ) -> tuple[pa.Table, pa.Table]:
    """(pool, val) tables with columns id, image_emb (left half), text_emb (right half),
    label."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ConfigError("the digits pool needs scikit-learn: pip install scikit-learn"
                          ) from None
    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0           # (n, 8, 8)
    left = images[:, :, :4].reshape(len(images), -1)            # (n, 32)
    right = images[:, :, 4:].reshape(len(images), -1)           # (n, 32)
    rng = seeds.rng(seed, "digits split")
    drop = rng.random(len(images)) < missing
    drop_left = drop & (rng.random(len(images)) < 0.5)
    drop_right = drop & ~drop_left
    table = pa.table({
        "id": pa.array(np.arange(len(images), dtype=np.int64)),
        "image_emb": fixed_list_array(left, drop_left),
        "text_emb": fixed_list_array(right, drop_right),
        "label": pa.array(digits.target.astype(np.int64)),
    })
    order = rng.permutation(len(images))
    n_val = int(round(val_share * len(images)))
    return (table.take(pa.array(np.sort(order[n_val:]))),
            table.take(pa.array(np.sort(order[:n_val]))))


def write_digits_pool(out: str, seed: int = 0) -> dict:
    """Write OUT/pool and OUT/val (Parquet, atomic); returns their paths."""
    pool, val = digits_tables(seed)
    base = out.rstrip("/")
    io.write_table(pool, f"{base}/pool/part-00000.parquet")
    io.write_table(val, f"{base}/val/part-00000.parquet")
    return {"pool": f"{base}/pool", "val": f"{base}/val", "rows": pool.num_rows,
            "val_rows": val.num_rows}
