"""A table read column by column (:class:`FrameParts`): what the table readers give and every table backend takes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd


@dataclass
class FrameParts:
    """A table read column by column: what every table backend is built from.

    ``axis_name`` says what the rows are (``"obs_names"``, ``"var_names"``), set by the shadow for tables aligned to
    an axis; table backends without a pandas index use it to name the index column (see
    :func:`shadows.backends.tables.index_column`).
    """

    index: Any
    index_name: str | None
    columns: dict[str, Any] = field(default_factory=dict)
    column_order: list[str] = field(default_factory=list)
    axis_name: str | None = None

    def to_pandas(self) -> pd.DataFrame:
        """The table as a pandas DataFrame, columns in ``column_order``, index named ``index_name``."""
        df = pd.DataFrame(
            {k: self.columns[k] for k in self.column_order},
            index=self.index,
            columns=self.column_order if self.column_order else None,
        )
        if self.index_name is not None:
            df.index.name = self.index_name
        return df
