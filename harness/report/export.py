"""CSV and Parquet exports of the flat results table, for spreadsheets and notebooks.

Spreadsheets execute a cell that starts with ``=``, ``+``, ``-`` or ``@`` (and, in some,
a tab or carriage return) as a formula: a model label ``=HYPERLINK("http://evil", "x")``
would become a live link, or worse, in whoever opens results.csv. Every *text* cell
starting with one of those characters (or their full-width forms) is therefore written
with a leading apostrophe, the OWASP-recommended neutraliser; numbers are untouched
(``-1.5`` stays a number). Parquet is typed and executes nothing, so it keeps the text.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def _columnar(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns holding mixed Python types (free-form config values) become text,
    so Arrow can store them; numbers, strings and timestamps keep their types."""
    out = frame.copy()
    for name in out.columns:
        if out[name].dtype == object:
            kinds = {type(value) for value in out[name].dropna()}
            if len(kinds) > 1 or kinds - {str, int, float, bool}:
                out[name] = out[name].map(lambda value: None if value is None or value != value else str(value))
    return out


#: First characters that make a spreadsheet cell a formula (ASCII and full-width forms).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def inert(value: object) -> object:
    """A text cell a spreadsheet will not run: ``'`` prefixed when it could start a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """The flat table as CSV, text cells neutralised (see the module doc)."""
    safe = frame.copy()
    for name in safe.columns:
        if safe[name].dtype == object or pd.api.types.is_string_dtype(safe[name]):
            safe[name] = safe[name].map(inert)
    safe.columns = [inert(str(name)) for name in safe.columns]
    safe.to_csv(path, index=False)
    return path


def write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    """Needs pyarrow (the ``parquet`` extra)."""
    _columnar(frame).to_parquet(path, index=False)
    return path
