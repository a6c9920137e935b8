"""The pool contract (docs/formats.md): column types, dimensions, and streamed validation.

``validate_pool`` reads a pool shard by shard, record batch by record batch, so memory
stays bounded by one batch plus the ids seen so far (8 bytes a row), and reports every
problem with its file, row and column.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
import numpy as np
import pyarrow as pa

from alray.config import PoolConfig
from alray.errors import PoolSchemaError
from alray.pool import io
from alray.pool.layout import is_list_embedding, is_packed, packed_spec

# the query table (ARCHITECTURE.md): one row per post sent to assessors
QUERY_COLUMNS = ("id", "score", "rank", "predicted_class", "predicted_prob", "step", "strategy",
                 "least_sure_head")

PROBLEM_KINDS = ("missing column", "wrong type", "wrong dimension", "non-finite value",
                 "no embedding", "duplicate id", "null id", "label out of range",
                 "non-integer label", "unreadable file", "not parquet", "empty pool")


@dataclass
class Problem:
    kind: str
    file: str
    message: str
    row: int | None = None
    id: object = None
    column: str | None = None

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f": row {self.row}"
        if self.id is not None:
            where += f" (id {self.id})"
        if self.column:
            where += f": column {self.column}"
        return f"{where}: {self.message}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "file": self.file, "row": self.row,
                "id": None if self.id is None else _plain_id(self.id),
                "column": self.column, "message": self.message}


def _plain_id(value):
    return value.item() if isinstance(value, np.generic) else value


@dataclass
class PoolSummary:
    rows: int = 0
    labelled: int = 0
    shards: int = 0
    bytes: int = 0
    dims: dict[str, int] = field(default_factory=dict)
    present: dict[str, int] = field(default_factory=dict)
    classes: Counter = field(default_factory=Counter)
    id_type: str = ""
    layouts: dict[str, str] = field(default_factory=dict)  # modality -> layout.layout_name

    def note_layout(self, modality: str, layout: str) -> None:
        """Record a shard's layout of ``modality``; shards that differ make it "mixed"."""
        seen = self.layouts.setdefault(modality, layout)
        if seen != layout and not seen.startswith("mixed"):
            self.layouts[modality] = f"mixed ({seen}, {layout})"

    def coverage(self) -> dict[str, float]:
        return {m: (n / self.rows if self.rows else 0.0) for m, n in self.present.items()}

    def to_dict(self) -> dict:
        return {"rows": self.rows, "labelled": self.labelled, "shards": self.shards,
                "bytes": self.bytes, "dims": dict(self.dims), "coverage": self.coverage(),
                "id_type": self.id_type, "layouts": dict(self.layouts),
                "class_histogram": {int(k): int(v) for k, v in sorted(self.classes.items())}}


@dataclass
class ValidationReport:
    uri: str
    summary: PoolSummary
    problems: list[Problem]
    counts: Counter  # problems per kind, including those beyond the listed examples

    @property
    def ok(self) -> bool:
        return sum(self.counts.values()) == 0

    def to_dict(self) -> dict:
        return {"pool": self.uri, "valid": self.ok, "summary": self.summary.to_dict(),
                "problem_counts": dict(self.counts),
                "problems": [p.to_dict() for p in self.problems]}


def is_embedding_type(t: pa.DataType) -> bool:
    """A list of float32/float64, or packed vectors (``fixed_size_binary``, whose field
    metadata ``layout.packed_spec`` checks)."""
    return is_list_embedding(t) or is_packed(t)


def is_id_type(t: pa.DataType) -> bool:
    # any integer or text type, dictionary-encoded too: readers normalise it to int64 or
    # string (alray.pool.normalize)
    from alray.pool.normalize import id_type_of

    return id_type_of(t) is not None


def is_label_type(t: pa.DataType) -> bool:
    # pandas writes nullable integer columns as float64 with NaN (integral floats are
    # accepted) and a column of None only as type null (nothing labelled yet)
    from alray.pool.normalize import is_label_type as readable

    return readable(t)


def infer_dims(uri: str, pool: PoolConfig) -> dict[str, int]:
    """Embedding dimension of each modality: a packed column's metadata, a fixed-size
    list's size, else the first non-null row. Packed metadata that is missing or
    disagrees with the byte width raises PoolSchemaError naming the file and column."""
    dims: dict[str, int] = {}
    for shard in io.pool_shards(uri):
        schema = io.open_parquet(shard).schema_arrow
        for modality, column in pool.embedding_columns.items():
            if modality in dims or column not in schema.names:
                continue
            t = schema.field(column).type
            if is_packed(t):
                try:
                    dims[modality] = packed_spec(schema.field(column))[1]
                except PoolSchemaError as exc:
                    raise PoolSchemaError(f"{shard.uri}: {exc}") from None
            elif pa.types.is_fixed_size_list(t):
                dims[modality] = t.list_size
        missing = [c for m, c in pool.embedding_columns.items() if m not in dims]
        if not missing:
            return dims
        for batch in io.iter_batches(shard, columns=[c for c in missing
                                                     if c in schema.names]):
            for modality, column in pool.embedding_columns.items():
                if modality not in dims and column in batch.schema.names and \
                        not pa.types.is_null(batch.schema.field(column).type):
                    lengths = batch.column(column).value_lengths().drop_null()
                    if len(lengths):
                        dims[modality] = int(lengths[0].as_py())
            if len(dims) == len(pool.embedding_columns):
                return dims
    return dims
