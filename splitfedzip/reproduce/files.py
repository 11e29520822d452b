"""Atomic writes: a file or folder appears whole under its name, or not at all."""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _temp(path: Path) -> Path:
    """A sibling name no reader looks for (same file system, so the rename is atomic)."""
    return path.with_name(f".{path.name}.partial-{os.getpid()}")


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary name, then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    """Atomic text write."""
    write_bytes(path, text.encode())


def write_csv(
    path: Path, rows: Sequence[dict[str, Any]], keys: Sequence[str] | None = None
) -> None:
    """Rows as CSV (header: ``keys``, or the union of the rows' keys in order), atomically."""
    if keys is None:
        keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(keys), lineterminator="\n")
    w.writeheader()
    w.writerows({k: _cell(r.get(k)) for k in keys} for r in rows)
    write_text(path, buf.getvalue())


def _cell(value: Any) -> Any:
    """Empty for missing or NaN values; floats in full precision."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return repr(value) if isinstance(value, float) else value


def save_figure(fig: Any, path: Path) -> None:
    """Save a matplotlib figure as PNG, atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    write_bytes(path, buf.getvalue())


def staging(folder: Path) -> Path:
    """Where a run is written before it is moved to ``folder``."""
    return folder.with_name(f".{folder.name}.partial")


def publish(stage: Path, folder: Path) -> None:
    """Move a finished run's folder into place, replacing an older one."""
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(stage, folder)
