"""Training and evaluation data files: reading, length filtering, writing."""

from srft.data.loading import (
    DataError,
    FilterReport,
    Rows,
    export_rows,
    filter_rows,
    iter_rows,
    load_rows,
    prompt_text,
)

__all__ = [
    "DataError",
    "FilterReport",
    "Rows",
    "export_rows",
    "filter_rows",
    "iter_rows",
    "load_rows",
    "prompt_text",
]
