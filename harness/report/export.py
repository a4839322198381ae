"""CSV and Parquet exports of the flat results table, for spreadsheets and notebooks."""

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


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    """Needs pyarrow (the ``parquet`` extra)."""
    _columnar(frame).to_parquet(path, index=False)
    return path
