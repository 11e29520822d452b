"""Round checkpoints on disk: one folder per complete round, written whole or not at all.

``checkpoints/round-NNNN/`` holds ``meta.json`` (format, package version, round, the whole
configuration) and one file per part (``federation.pt``, ``main.pt``, ``client-K.pt``, ``run.pt``).
A round is written into a hidden temporary folder which is then renamed: a process killed while
writing leaves the previous round's folder as the latest complete one. Older rounds are removed
once the new one is in place.

Under ``launch`` each process writes its own part into the same folder (:func:`write_part`): a
file written whole and renamed, with the round's meta inside; ``meta.json`` appears once every
part of the round is there, so a folder with ``meta.json`` is complete in both runtimes.
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
#: Rounds of its own part a process keeps: the processes of a deployment reach their round
#: boundaries at different times (at most two rounds apart), and a round is complete only once
#: the slowest has written its part of it.
KEEP_PARTS = 3


def package_version() -> str:
    """The installed splitfedzip version (checkpoints from another one are refused)."""
    try:
        return metadata.version("splitfedzip")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


def round_dir(directory: Path, r: int) -> Path:
    """The folder of round ``r``'s checkpoint."""
    return directory / f"{_PREFIX}{r:04d}"


def meta(cfg: Config, r: int, runtime: str) -> dict[str, Any]:
    """What identifies a checkpoint: format, version, runtime (train or launch), round, config."""
    return {
        "format": FORMAT, "version": package_version(), "runtime": runtime, "round": r,
        "config": cfg.to_dict(),
    }  # fmt: skip


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
    (tmp / "meta.json").write_text(json.dumps(meta(cfg, r, "train"), indent=1) + "\n")
    shutil.rmtree(final, ignore_errors=True)  # a round rewritten by a resumed run
    os.replace(tmp, final)
    for old in complete_rounds(directory):
        if old < r:
            shutil.rmtree(round_dir(directory, old), ignore_errors=True)
    return final


def write_part(
    directory: Path, r: int, cfg: Config, name: str, state: Any, parts: list[str]
) -> Path:
    """Write one process's part ``name`` of round ``r`` atomically (``launch``); meta.json once
    every one of ``parts`` is in. Removes this process's parts of rounds before the last few."""
    folder = round_dir(directory, r)
    folder.mkdir(parents=True, exist_ok=True)
    about = meta(cfg, r, "launch")
    path = folder / f"{name}.pt"
    _atomic(path, lambda f: torch.save({"meta": about, "state": state}, f))
    # Each process checks after its own rename, so the last one to write sees every part.
    if all((folder / f"{p}.pt").is_file() for p in parts):
        _atomic(folder / "meta.json", lambda f: f.write(json.dumps(about, indent=1).encode()))
    for old in part_rounds(directory, name):
        if old <= r - KEEP_PARTS:
            old_dir = round_dir(directory, old)
            (old_dir / "meta.json").unlink(missing_ok=True)  # no longer complete
            (old_dir / f"{name}.pt").unlink(missing_ok=True)
            if not any(old_dir.glob("*.pt")):
                shutil.rmtree(old_dir, ignore_errors=True)
    return path


def _atomic(path: Path, write: Any) -> None:
    """Write ``path`` through a temporary file in its folder, flushed, then renamed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def part_rounds(directory: Path, name: str) -> list[int]:
    """Rounds that hold part ``name``, in order (complete or not)."""
    return [r for r in _round_folders(directory) if _holds(directory, r, f"{name}.pt")]


def load_own_part(
    directory: Path, cfg: Config, name: str, r: int | None = None
) -> tuple[int, Any] | None:
    """Part ``name`` of round ``r`` (None: its latest round), checked against ``cfg``: (round,
    state); None when this process has no part yet."""
    rounds = part_rounds(directory, name)
    if r is None:
        if not rounds:
            return None
        r = rounds[-1]
    file = round_dir(directory, r) / f"{name}.pt"
    if not file.is_file():
        raise UserError(f"{file}: missing from the checkpoint")
    saved = torch.load(file, weights_only=False)
    check_meta_of(saved["meta"], cfg, file, "launch")
    return r, saved["state"]


def _round_folders(directory: Path) -> list[int]:
    if not directory.is_dir():
        return []
    out = []
    for p in directory.iterdir():
        if p.is_dir() and p.name.startswith(_PREFIX):
            try:
                out.append(int(p.name[len(_PREFIX) :]))
            except ValueError:
                continue
    return sorted(out)


def complete_rounds(directory: Path) -> list[int]:
    """Rounds with a complete checkpoint folder (one with meta.json), in order."""
    return [r for r in _round_folders(directory) if _holds(directory, r, "meta.json")]


def _holds(directory: Path, r: int, file: str) -> bool:
    return (round_dir(directory, r) / file).is_file()


def clear(directory: Path) -> None:
    """Remove every round checkpoint (a fresh run into a folder that had one)."""
    for p in directory.glob(f"{_PREFIX}*") if directory.is_dir() else []:
        shutil.rmtree(p, ignore_errors=True)
    for p in directory.glob(f".{_PREFIX}*.tmp") if directory.is_dir() else []:
        shutil.rmtree(p, ignore_errors=True)


def latest(directory: Path, cfg: Config, runtime: str = "train") -> tuple[int, Path] | None:
    """The last complete round and its folder, checked against ``cfg`` and the runtime that
    resumes it; None when there is none. A checkpoint from another configuration, version or
    runtime is a :class:`UserError`."""
    rounds = complete_rounds(directory)
    if not rounds:
        return None
    path = round_dir(directory, rounds[-1])
    check_meta(path, cfg, runtime)
    return rounds[-1], path


def check_meta(path: Path, cfg: Config, runtime: str = "train") -> dict[str, Any]:
    """meta.json of ``path``; an error naming the first key that differs from ``cfg``."""
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}/meta.json: not a readable checkpoint ({e})") from None
    return check_meta_of(meta, cfg, path, runtime)


def check_meta_of(meta: dict[str, Any], cfg: Config, path: Path, runtime: str) -> dict[str, Any]:
    """``meta`` itself; an error naming the first key that differs from this run's."""
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: checkpoint format {meta.get('format')!r}, this reads {FORMAT}")
    if meta.get("version") != package_version():
        raise UserError(
            f"{path}: written by splitfedzip {meta.get('version')!r}, this is "
            f"{package_version()!r} (key 'version'); resume with the version that wrote it"
        )
    written = meta.get("runtime", "train")  # checkpoints from before the key were train's
    if written != runtime:
        raise UserError(
            f"{path}: written by {written!r}, this run is {runtime!r} (key 'runtime'); each "
            "process of a launch saves its own part, so resume it with the command that wrote it"
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
