"""The digits pool: a valid two-view pool with a seeded, disjoint validation split."""
from __future__ import annotations

import numpy as np

from alray.config import PoolConfig
from alray.pool.digits import digits_tables, write_digits_pool
from alray.pool.validate import validate_pool


def test_digits_pool_is_valid_and_split(tmp_path):
    result = write_digits_pool(str(tmp_path / "digits"), seed=0)
    assert result["rows"] + result["val_rows"] == 1797
    for uri in (result["pool"], result["val"]):
        report = validate_pool(uri, PoolConfig(), n_classes=10)
        assert report.ok, report.problems
    pool, val = digits_tables(seed=0)
    assert not set(pool.column("id").to_pylist()) & set(val.column("id").to_pylist())
    image = pool.column("image_emb")
    assert 0 < image.null_count < 0.1 * pool.num_rows  # some posts lost their left half
    both = pool.column("image_emb").is_valid().to_numpy(zero_copy_only=False) | \
        pool.column("text_emb").is_valid().to_numpy(zero_copy_only=False)
    assert both.all()  # never both halves missing
    again, _ = digits_tables(seed=0)
    assert again.equals(pool)
    other, _ = digits_tables(seed=1)
    assert not np.array_equal(other.column("id").to_numpy(), pool.column("id").to_numpy())
