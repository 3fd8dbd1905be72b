"""Markdown tables of pandas frames, for the reports and the command lines (pandas' own to_markdown needs
the tabulate package, which nothing else here does)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd


def to_markdown(df: pd.DataFrame, digits: int = 3) -> str:
    """A Markdown table of `df`: floats rounded to `digits`, NaN shown as '-'."""
    def cell(v: Any) -> str:
        if isinstance(v, (float, np.floating)):
            return "-" if math.isnan(v) else f"{v:.{digits}f}"
        return str(v).replace("|", "\\|")

    numeric = [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]
    lines = ["| " + " | ".join(map(str, df.columns)) + " |",
             "|" + "|".join("---:" if n else ":---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"
