"""CSV files that people open in spreadsheets: text cells cannot become formulas.

Ids, strategy names and other text reach the query CSVs assessors open in Excel or
LibreOffice, which run a cell starting with ``=``, ``+``, ``-`` or ``@`` (and a tab or
carriage return) as a formula ("CSV injection"). Every alray CSV for people is written
by ``write_csv``: a text cell starting with one of those characters, or with the quote
itself, gets a leading ``'`` (OWASP's advice; spreadsheets show the rest as text).
Numeric columns are left alone, so scores and negative numbers stay numbers. Escaping the
quote too makes it reversible: ``unescape`` gives back exactly the original text, which
is how an answer file's ids are read (``alray labels import``).
"""
from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
QUOTE = "'"
_PATTERN = "^[=+\\-@\t\r']"


def escape(text: str) -> str:
    """``text`` safe in a spreadsheet cell."""
    return QUOTE + text if text.startswith(FORMULA_STARTS + (QUOTE,)) else text


def unescape(text: str) -> str:
    """The original of an ``escape``d cell (text ``escape`` left alone is returned as is)."""
    if text.startswith(QUOTE) and text[1:].startswith(FORMULA_STARTS + (QUOTE,)):
        return text[1:]
    return text


def spreadsheet_safe(table: pa.Table) -> pa.Table:
    """``table`` with every text cell escaped; other columns untouched."""
    columns = []
    for column in table.columns:
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            hit = pc.match_substring_regex(column, _PATTERN)
            column = pc.if_else(hit, pc.binary_join_element_wise(QUOTE, column, ""), column)
        columns.append(column)
    return pa.table(columns, names=table.column_names)


def write_csv(table: pa.Table, path: str | os.PathLike) -> None:
    """Write ``table`` as a CSV for people (header, text cells escaped)."""
    pacsv.write_csv(spreadsheet_safe(table), str(path))


__all__ = ["escape", "unescape", "spreadsheet_safe", "write_csv"]
