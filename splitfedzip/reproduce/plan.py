"""The grid of runs of a reproduction: presets (YAML, typed here) and the runs they expand to."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import (
    CLASSIC_CODECS,
    DATASETS,
    LEARNED_CODECS,
    Config,
    ConfigError,
    apply_overrides,
    dump_config,
    from_dict,
)
from .baseline_grid import BaselineGrid, baseline_grid

#: Folder of the preset files ``reproduce-<name>.yaml``.
PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"
#: Each classic codec's knob, the ``codec_options`` key its grid sweeps in place of λ (None:
#: no knob, one run per scheme and seed).
KNOBS = {"fp16": None, "bf16": None, "int": "bits", "topk": "topk_fraction",
         "randtopk": "topk_fraction"}  # fmt: skip
#: Keys the grid sets on every run; ``--set`` may not change them.
GRID_KEYS = ("scheme", "codec", "lambda", "train.seed", "data.dataset",
             *sorted({f"codec_options.{k}" for k in KNOBS.values() if k}))  # fmt: skip
#: Schemes whose curves are drawn and compared (``nc`` is run once per seed, outside the grid).
GRID_SCHEMES = ("f", "g", "fg")


@dataclass(frozen=True)
class FigureOptions:
    """Which runs the per-run figures (Figs. 5/6, Table 2) are drawn from."""

    #: Figs. 5/6 use the first of these variants that was run, at the λ nearest ``history_lambda``.
    history_variants: tuple[str, ...] = ("fg-cheng2020-attn", "fg-ae")
    history_lambda: float = 1.0
    #: Table 2: predictions of this variant, at most ``example_lambdas`` λ spread over the grid.
    example_variant: str = "fg-ae"
    example_lambdas: int = 5
    #: Table 2: test images shown (rows), the first ones of the first seed's test set.
    examples: int = 2


@dataclass(frozen=True)
class Preset:
    """A reproduction's scale and grid: the base run config, datasets, schemes, codecs, λ, seeds,
    and the classic codecs with their knobs' grids."""

    name: str
    #: Base run configuration (``splitfedzip train``'s YAML keys) shared by every run.
    run: Mapping[str, Any]
    datasets: tuple[str, ...]
    schemes: tuple[str, ...]
    codecs: tuple[str, ...]
    #: Codec -> its λ grid (each λ is run for each scheme and seed).
    lambdas: Mapping[str, tuple[float, ...]]
    seeds: int
    figures: FigureOptions = field(default_factory=FigureOptions)
    #: Classic codec -> its knob's grid (``KNOBS``; empty for a codec without one).
    classic: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    #: Codec -> ``codec_options`` keys set on its runs only, over the base run's.
    codec_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: The paper's Table 3 (Ayad et al.'s M1/M2, two-stage, two-phase); None: not run.
    baselines: BaselineGrid | None = None
    #: Dataset -> run keys set on that dataset's runs only, over ``run``.
    dataset_run: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Check the grid, so that a bad preset fails before any run starts."""
        _need(bool(self.datasets), "datasets: give at least one")
        _need(all(d in DATASETS for d in self.datasets), f"datasets: each one of {DATASETS}")
        _need(bool(self.schemes), "schemes: give at least one")
        _need(all(s in GRID_SCHEMES for s in self.schemes), f"schemes: each one of {GRID_SCHEMES}")
        learned = LEARNED_CODECS
        _need(all(c in learned for c in self.codecs), f"codecs: each one of {learned}")
        for c in self.codecs:
            lams = self.lambdas.get(c)
            _need(bool(lams), f"lambdas: no grid for codec {c!r}")
            _need(all(x > 0 and math.isfinite(x) for x in lams), f"lambdas.{c}: must be > 0")
        for c, values in self.classic.items():
            _need(c in CLASSIC_CODECS, f"classic: {c!r} is not one of {CLASSIC_CODECS}")
            knob = KNOBS[c]
            if knob is None:
                _need(not values, f"classic.{c}: has no knob; give [] (one run per point)")
            else:
                _need(bool(values), f"classic.{c}: give the grid of codec_options.{knob}")
        for c, options in self.codec_options.items():
            _need(c in (*self.codecs, *self.classic), f"codec_options: {c!r} is not in the grid")
            _need(isinstance(options, Mapping), f"codec_options.{c}: must be a mapping")
        for d, keys in self.dataset_run.items():
            _need(d in DATASETS, f"dataset_run: {d!r} is not one of {DATASETS}")
            _need(isinstance(keys, Mapping), f"dataset_run.{d}: must be a mapping")
        _need(self.seeds >= 1, "seeds: must be >= 1")


@dataclass(frozen=True)
class Run:
    """One training run of the grid and where it is written."""

    dataset: str
    #: ``nc``, or ``<scheme>-<codec>``.
    variant: str
    #: None for ``nc`` and the classic codecs (no rate term, λ plays no part).
    lmbda: float | None
    seed: int
    config: Config
    #: A classic codec's knob (its ``codec_options`` key) and value; None otherwise.
    knob: tuple[str, float] | None = None

    @property
    def path(self) -> Path:
        """Folder relative to the reproduction's output folder."""
        parts = [self.dataset, self.variant]
        if self.lmbda is not None:
            parts.append(f"lambda-{self.lmbda:g}")
        if self.knob is not None:
            parts.append(f"{self.knob[0]}-{self.knob[1]:g}")
        return Path(*parts, f"seed-{self.seed}")

    @property
    def name(self) -> str:
        """The folder as a readable name, for progress lines."""
        return self.path.as_posix()


@dataclass(frozen=True)
class Plan:
    """Every run of a reproduction, in queue order, with what it was made from."""

    preset: Preset
    #: Dataset (folder name) -> its base run configuration (before the grid's keys).
    bases: Mapping[str, Config]
    runs: tuple[Run, ...]
    seeds: int
    #: What every dataset's base is made from besides the preset: ``--config``'s keys, ``--set``.
    source: Mapping[str, Any] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()

    def base_yaml(self, dataset: str) -> str:
        """A dataset's base run configuration as YAML (scheme, codec, λ and seed vary)."""
        return dump_config(self.bases[dataset])

    def base(self, dataset: str) -> Config:
        """``dataset``'s base run configuration, for the grid's datasets and any other."""
        if dataset in self.bases:
            return self.bases[dataset]
        return _dataset_base(self.preset, self.source, dataset, self.overrides)


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(f"reproduce preset: {message}")


def load_preset(name_or_path: str | Path) -> Preset:
    """A preset by name (``quick``, ``full``: ``configs/reproduce-<name>.yaml``) or YAML path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"reproduce-{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"reproduce preset not found: {path}")
    return preset_from_dict(yaml.safe_load(path.read_text()) or {}, default_name=path.stem)


def preset_from_dict(raw: Mapping[str, Any], default_name: str = "custom") -> Preset:
    """Build a :class:`Preset` from a preset file's mapping."""
    _need(isinstance(raw, Mapping), "the top level must be a mapping")
    keys = {"name", "run", "datasets", "schemes", "codecs", "lambdas", "seeds", "figures",
            "classic", "codec_options", "baselines", "dataset_run"}  # fmt: skip
    unknown = set(raw) - keys
    _need(not unknown, f"unknown keys {sorted(unknown)} (known: {sorted(keys)})")
    figures = dict(raw.get("figures") or {})
    if "history_variants" in figures:
        figures["history_variants"] = tuple(figures["history_variants"])
    try:
        options = FigureOptions(**figures)
    except TypeError as e:
        raise ConfigError(f"reproduce preset: figures: {e}") from e
    lambdas = {c: tuple(float(x) for x in v) for c, v in (raw.get("lambdas") or {}).items()}
    classic = {c: tuple(v or ()) for c, v in (raw.get("classic") or {}).items()}
    return Preset(
        name=str(raw.get("name", default_name)),
        run=dict(raw.get("run") or {}),
        datasets=tuple(raw.get("datasets") or ()),
        schemes=tuple(raw.get("schemes") or ()),
        codecs=tuple(raw.get("codecs") or ()),
        lambdas=lambdas,
        seeds=int(raw.get("seeds", 1)),
        figures=options,
        classic=classic,
        codec_options=dict(raw.get("codec_options") or {}),
        baselines=baseline_grid(raw.get("baselines")),
        dataset_run=dict(raw.get("dataset_run") or {}),
    )


def merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge of two config mappings; ``top`` wins."""
    out = copy.deepcopy(dict(base))
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def make_plan(
    preset: Preset,
    datasets: Sequence[str] | None = None,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    seeds: int | None = None,
) -> Plan:
    """Expand a preset into runs.

    Each run's config is the preset's ``run``, then ``config`` (a YAML file, whose dataset
    replaces the preset's list), then ``overrides`` (``--set``), then the grid's keys.
    """
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in GRID_KEYS:
            raise ConfigError(
                f"--set {key}: the grid sets it; use the preset, --dataset or --seeds"
            )
    keys: dict[str, Any] = {}
    if config is not None:
        keys = _read_yaml(Path(config))
        datasets = [str(merge(preset.run, keys).get("data", {}).get("dataset", "synthetic-lesion"))]
    bases = {d: _dataset_base(preset, keys, d, overrides) for d in (datasets or preset.datasets)}
    count = preset.seeds if seeds is None else seeds
    if count < 1:
        raise ConfigError(f"--seeds: must be >= 1, got {count}")
    runs = []
    # Seed-major order: after the first seed every curve has a point per λ.
    for seed in range(count):
        for dataset, base in bases.items():
            runs.append(_run(preset, base, dataset, "nc", None, None, seed))
            for scheme in preset.schemes:
                for codec in preset.codecs:
                    for lam in preset.lambdas[codec]:
                        runs.append(_run(preset, base, dataset, scheme, codec, lam, seed))
                for codec, values in preset.classic.items():
                    knob = KNOBS[codec]
                    for value in values if knob else (None,):
                        setting = None if value is None else (knob, value)
                        runs.append(_run(preset, base, dataset, scheme, codec, None, seed, setting))
    _check_shapes(bases, (*preset.codecs, *preset.classic))
    return Plan(preset, bases, tuple(runs), count, keys, tuple(overrides))


def _dataset_base(
    preset: Preset, config: Mapping[str, Any], dataset: str, overrides: Sequence[str]
) -> Config:
    """One dataset's base: the preset's ``run``, its ``dataset_run`` keys, ``config``, the
    dataset, then ``--set``."""
    raw = merge(merge(preset.run, preset.dataset_run.get(dataset, {})), config)
    return from_dict(apply_overrides(merge(raw, {"data": {"dataset": dataset}}), list(overrides)))


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return raw


def _run(
    preset: Preset,
    base: Config,
    dataset: str,
    scheme: str,
    codec: str | None,
    lam: float | None,
    seed: int,
    knob: tuple[str, float] | None = None,
) -> Run:
    """One run: the base config with the grid's keys set.

    A classic codec's run sets its knob and λ = 1: with no rate term, the loss is NC's.
    """
    raw = base.to_dict()
    raw["codec_options"].update(preset.codec_options.get(codec, {}))
    raw["scheme"] = scheme
    if codec is not None:
        raw["codec"] = codec
    if lam is not None:
        raw["lambda"] = lam
    if codec in CLASSIC_CODECS:
        raw["lambda"] = 1.0
    if knob is not None:
        key, value = knob
        raw["codec_options"][key] = int(value) if key == "bits" and value == int(value) else value
    raw["train"]["seed"] = seed
    variant = "nc" if codec is None else f"{scheme}-{codec}"
    where = variant + ("" if knob is None else f" {knob[0]}={knob[1]:g}")
    try:
        config = from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"reproduce preset: {dataset} {where}: {e}") from e
    return Run(dataset, variant, lam, seed, config, knob)


def _check_shapes(bases: Mapping[str, Config], codecs: Sequence[str]) -> None:
    """Every codec must take the split tensors (image_size / 2), checked before any run."""
    from ..codecs import make_codec
    from ..models import split_channels

    for dataset, cfg in bases.items():
        side = cfg.data.image_size // 2  # S1 and S2 are at half the input resolution
        channels = split_channels(cfg.model.base_width)
        for name in codecs:
            codec = make_codec(name, channels, latent_channels=cfg.codec_options.latent_channels)
            if not codec.learned:
                continue  # any tensor will do
            try:
                codec.check_shape((1, channels, side, side))
            except ValueError as e:
                raise ConfigError(
                    f"{dataset}: data.image_size={cfg.data.image_size} gives {side}x{side} split "
                    f"tensors: {e}"
                ) from e
