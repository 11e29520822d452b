"""Round checkpoints on disk: one folder per complete round, written whole or not at all.

``checkpoints/round-NNNN/`` holds ``meta.json`` (format, package version, round, the whole
configuration) and one file per part (``federation.pt``, ``main.pt``, ``client-K.pt``, ``run.pt``).
A round is written into a hidden temporary folder which is then renamed: a process killed while
writing leaves the previous round's folder as the latest complete one. Older rounds are removed
once the new one is in place.
"""

from __future__ import annotations

import json
import os
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..errors import UserError

FORMAT = 1
_PREFIX = "round-"


def package_version() -> str:
    """The installed splitfedzip version (checkpoints from another one are refused)."""
    try:
        return metadata.version("splitfedzip")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


def round_dir(directory: Path, r: int) -> Path:
    """The folder of round ``r``'s checkpoint."""
    return directory / f"{_PREFIX}{r:04d}"


def write_round(directory: Path, r: int, cfg: Config, parts: dict[str, Any]) -> Path:
    """Write round ``r`` atomically: every part, then meta.json, then the rename."""
    directory.mkdir(parents=True, exist_ok=True)
    final = round_dir(directory, r)
    tmp = directory / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, state in parts.items():
        with open(tmp / f"{name}.pt", "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    meta = {"format": FORMAT, "version": package_version(), "round": r, "config": cfg.to_dict()}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    shutil.rmtree(final, ignore_errors=True)  # a round rewritten by a resumed run
    os.replace(tmp, final)
    for old in complete_rounds(directory):
        if old < r:
            shutil.rmtree(round_dir(directory, old), ignore_errors=True)
    return final


def complete_rounds(directory: Path) -> list[int]:
    """Rounds with a complete checkpoint folder, in order."""
    if not directory.is_dir():
        return []
    out = []
    for p in directory.iterdir():
        if p.is_dir() and p.name.startswith(_PREFIX) and (p / "meta.json").is_file():
            try:
                out.append(int(p.name[len(_PREFIX) :]))
            except ValueError:
                continue
    return sorted(out)


def clear(directory: Path) -> None:
    """Remove every round checkpoint (a fresh run into a folder that had one)."""
    for p in directory.glob(f"{_PREFIX}*") if directory.is_dir() else []:
        shutil.rmtree(p, ignore_errors=True)
    for p in directory.glob(f".{_PREFIX}*.tmp") if directory.is_dir() else []:
        shutil.rmtree(p, ignore_errors=True)


def latest(directory: Path, cfg: Config) -> tuple[int, Path] | None:
    """The last complete round and its folder, checked against ``cfg``; None when there is
    none. A checkpoint from another configuration or version is a :class:`UserError`."""
    rounds = complete_rounds(directory)
    if not rounds:
        return None
    path = round_dir(directory, rounds[-1])
    check_meta(path, cfg)
    return rounds[-1], path


def check_meta(path: Path, cfg: Config) -> dict[str, Any]:
    """meta.json of ``path``; an error naming the first key that differs from ``cfg``."""
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}/meta.json: not a readable checkpoint ({e})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: checkpoint format {meta.get('format')!r}, this reads {FORMAT}")
    if meta.get("version") != package_version():
        raise UserError(
            f"{path}: written by splitfedzip {meta.get('version')!r}, this is "
            f"{package_version()!r} (key 'version'); resume with the version that wrote it"
        )
    saved, now = _flat(meta.get("config", {})), _flat(cfg.to_dict())
    for key in sorted(saved.keys() | now.keys()):
        if saved.get(key) != now.get(key):
            raise UserError(
                f"{path}: the checkpoint was written with {key}={saved.get(key)!r}, this run "
                f"has {key}={now.get(key)!r}; resume with the configuration that wrote it"
            )
    return meta


def load_part(path: Path, name: str) -> Any:
    """One part of a round checkpoint (written by this package, so unpickled whole)."""
    file = path / f"{name}.pt"
    if not file.is_file():
        raise UserError(f"{file}: missing from the checkpoint")
    return torch.load(file, weights_only=False)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out |= _flat(v, f"{prefix}.{k}" if prefix else str(k))
    return out
