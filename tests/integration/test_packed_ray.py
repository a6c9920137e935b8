"""Packed pools through Ray Data: field metadata survives read_parquet + map_batches, and
the sliced pyarrow batches decode to the rows they hold."""
from __future__ import annotations

import numpy as np

from alray.config import PoolConfig
from alray.pool.arrays import arrays_from_table
from alray.pool.layout import DIM_KEY, DTYPE_KEY
from alray.pool.pack import pack_pool
from tests.conftest import make_pool_table, write_pool

DIMS = {"image": 8, "text": 4}


def test_ray_data_keeps_packed_metadata_and_slices_decode(ray_session, tmp_path):
    import ray

    tables = [make_pool_table(300, seed=i, first_id=1000 * i) for i in range(2)]
    src = write_pool(tmp_path / "pool", tables)
    pack_pool(src, str(tmp_path / "packed"), "float16")
    ds = ray.data.read_parquet(str(tmp_path / "packed")).map_batches(
        lambda batch: batch, batch_format="pyarrow", batch_size=37)  # slices of blocks
    field = ds.schema().base_schema.field("image_emb")
    assert (field.metadata[DTYPE_KEY], field.metadata[DIM_KEY]) == (b"float16", b"8")
    got = [arrays_from_table(batch, PoolConfig(), DIMS)
           for batch in ds.iter_batches(batch_format="pyarrow", batch_size=53)]
    ids = np.concatenate([g.ids for g in got])
    order = np.argsort(ids)  # rows in any order
    want = arrays_from_table(__import__("pyarrow").concat_tables(tables), PoolConfig(), DIMS)
    np.testing.assert_array_equal(ids[order], want.ids)
    for m in DIMS:
        mine = np.concatenate([g.features[m] for g in got])[order]
        np.testing.assert_array_equal(
            mine, want.features[m].astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(np.concatenate([g.present[m] for g in got])[order],
                                      want.present[m])
