"""Typed run configuration: dataclasses, YAML loading, ``--set`` overrides and validation."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import UserError

SCHEMES = ("nc", "f", "g", "fg")
#: Codecs trained by rate-distortion optimisation, with λ weighing their rate.
LEARNED_CODECS = ("ae", "cheng2020-attn")
#: Codecs with nothing to learn (docs/codecs.md, "Classic codecs").
CLASSIC_CODECS = ("fp16", "bf16", "int", "topk", "randtopk")
CODECS = LEARNED_CODECS + CLASSIC_CODECS
DATASETS = ("synthetic-lesion", "synthetic-blastocyst", "ham10000", "blastocyst")


class ConfigError(UserError):
    """A configuration key is unknown or its value is invalid."""


@dataclass
class PartitionConfig:
    """How the training pool is divided among clients."""

    kind: Literal["counts", "iid", "dirichlet"] = "iid"
    clients: int = 2
    counts: list[int] | None = None
    alpha: float = 0.5

    def num_clients(self) -> int:
        """Number of clients this partition produces."""
        return len(self.counts) if self.kind == "counts" and self.counts else self.clients


@dataclass
class DataConfig:
    """Dataset, image size and client partition.

    A folder data set comes either as one ``root`` that the partition divides among the clients
    and from which the test set is held out, or as one folder per client (``client_roots``, or
    ``splitfedzip client --data-root``), each split into training and validation by its client
    alone, with the tester's test set in ``test_root``. Only the clients read data.
    """

    dataset: str = "synthetic-lesion"
    root: str | None = None
    #: Client i's own folder; the partition and ``test_samples`` then play no part.
    client_roots: list[str] | None = None
    #: The tester's (client 0's) test folder, with ``client_roots`` or ``--data-root``.
    test_root: str | None = None
    image_size: int = 128
    num_samples: int = 48
    test_samples: int = 16
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    val_fraction: float = 0.15
    augment: bool = True

    def num_clients(self) -> int:
        """Number of clients: one per folder, or as many as the partition makes."""
        return len(self.client_roots) if self.client_roots else self.partition.num_clients()


@dataclass
class ModelConfig:
    """The split U-Net; ``num_classes`` follows the dataset when left unset."""

    base_width: int = 8
    num_classes: int | None = None
    #: Probability the freshly initialised head gives the foreground classes together
    #: (background 1 - p, the rest shared evenly), as in the prior initialisation of Lin et al.
    #: (Focal Loss, 2017). None keeps PyTorch's default head, the paper's; its random bias can
    #: start a narrow U-Net marking most pixels as lesion, a state that short runs do not leave
    #: (docs/benchmarks.md, "Seeds").
    foreground_prior: float | None = None


@dataclass
class CodecConfig:
    """Codec options shared by every crossing; each codec reads its own (docs/codecs.md).

    For the learned codecs the defaults are the paper's: Adam at ``lr`` on every weight, a fresh
    snapshot only at round starts. The other options speed codec training up within a short
    run; each is a departure from the paper that is off by default.
    """

    latent_channels: int = 64
    lr: float = 1e-4
    aux_lr: float = 1e-3
    #: Learning rate of the entropy models' density parameters; None: the same as ``lr``.
    entropy_lr: float | None = None
    #: Initial width of the factorized priors' densities (CompressAI's ``init_scale``).
    init_scale: float = 10.0
    #: ``ae``, ``cheng2020-attn``: a learned per-channel gain exp(g) on the latent before
    #: quantisation (and exp(-g) after), g started at log(latent_gain) and trained at
    #: ``entropy_lr``; None: none (the paper's models).
    latent_gain: float | None = None
    #: Learning rate of the latent gains; None: ``entropy_lr`` (or ``lr`` where that is unset).
    latent_gain_lr: float | None = None
    #: Clip the codec's gradient to this norm before each step (CompressAI trains with 1.0).
    clip_norm: float | None = None
    #: Extra rate-distortion steps per training batch on the tensor the sender already holds.
    local_steps: int = 0
    #: Rate-distortion steps on the first training batch of round 0, before it is coded.
    warmup_steps: int = 0
    #: Publish a fresh snapshot before every N-th training batch's tensor (0: at round starts).
    sync_every: int = 0
    #: Normalise features by their RMS before coding, as gradients are, so that distortion is
    #: relative to the features' scale.
    normalize_features: bool = False
    #: ``int``: bits per level, 1-8 (its knob); also the levels of quantised top-k values.
    bits: int = 8
    #: ``int`` and quantised top-k values: one quantiser range per tensor or per channel.
    scale: Literal["tensor", "channel"] = "tensor"
    #: ``topk``, ``randtopk``: the fraction of each batch element's values kept (their knob).
    topk_fraction: float = 0.1
    #: ``topk``, ``randtopk``: kept values as float16 (null) or quantised to this many bits.
    topk_value_bits: int | None = None
    #: ``randtopk``: probability mass of the values outside the top k (Zheng et al.'s α).
    randtopk_alpha: float = 0.1
    #: Classic codecs: add to each training tensor what coding lost from the sender's last one.
    error_feedback: bool = False


@dataclass
class TrainConfig:
    """Optimisation and device."""

    rounds: int = 2
    local_epochs: int = 2
    batch_size: int = 1
    lr: float = 1e-4
    seed: int = 0
    device: str = "auto"
    max_batches: int | None = None
    #: Ayad et al.'s gradient threshold: the S2 gradient crosses only for a batch whose task
    #: (Dice) loss exceeds it; otherwise the main server and the front end skip that batch
    #: (docs/baselines.md). None sends every gradient; ``.inf`` none.
    gradient_threshold: float | None = None


@dataclass
class CrossingFlags:
    """One flag per crossing's codec: whether it trains (false: frozen from round 0)."""

    s1_feature: bool = True
    s2_feature: bool = True
    s1_gradient: bool = True
    s2_gradient: bool = True


@dataclass
class CodecTrainingConfig:
    """Codecs (and the U-Net) from an earlier run, and when the codecs stop training: the
    paper's two-stage and two-phase training, Ayad et al.'s M1 and M2 (docs/baselines.md)."""

    #: An earlier run's output folder: its ``checkpoints/`` give the initial codecs.
    pretrained: str | None = None
    #: Also start the front end, server part and back end from that run's U-Net.
    pretrained_unet: bool = False
    trainable: CrossingFlags = field(default_factory=CrossingFlags)
    #: Every codec is frozen from this round on (Ayad et al.'s M2: 5).
    freeze_round: int | None = None
    #: Freeze from the next round once the round's training BPP-T (S1 + S2 features) changed
    #: by less than this fraction of the round before's.
    freeze_rate_change: float | None = None


@dataclass
class FederationConfig:
    """SplitFed variant, checkpoint selection and round deadlines."""

    variant: Literal["v1", "v2"] = "v1"
    select: Literal["best", "last"] = "best"
    #: Seconds after a round's first submission (or validation report) after which the clients
    #: still missing are dropped from that round and it completes with the others.
    round_timeout: float = 900.0
    #: How client submissions and global models cross: ``float32`` whole models, exact; or the
    #: update to the model the receiver holds, quantised (``float16``, or ``int8``, ``int4``,
    #: ``int2`` levels per output channel) and xz-compressed. The sender adopts what the
    #: receiver reconstructs.
    weights_codec: Literal["float32", "float16", "int8", "int4", "int2"] = "float32"
    #: Error feedback on the coded exchange: each client, and the federation server for the
    #: global model, keeps what its last coded update lost to quantisation and adds it to the
    #: next update before coding it, so that the error is sent late rather than dropped.
    weights_error_feedback: bool = False
    #: ``int2`` only: the largest fraction of each output channel's update sent as ±scale, the
    #: rest as 0 (sparse ternary compression); 1: as many as minimise the error. Codec syncs
    #: follow it too.
    weights_keep: float = 1.0
    #: The codec of round 0's exchange (the submissions from the initial model and the first
    #: global update: a run's largest updates, whose ternary error set the first global model
    #: back, docs/benchmarks.md); unset: ``weights_codec``.
    weights_codec_first: Literal["float16", "int8", "int4", "int2"] | None = None
    #: Clients drawn (seeded) to train in each round: a number (>= 1) or a fraction (0 to 1);
    #: unset, every client trains. Every client still validates each global model.
    clients_per_round: int | float | None = None


@dataclass
class Config:
    """A whole SplitFedZip run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    scheme: Literal["nc", "f", "g", "fg"] = "nc"
    codec: str = "ae"
    lmbda: float = 1.0
    codec_options: CodecConfig = field(default_factory=CodecConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    codec_training: CodecTrainingConfig = field(default_factory=CodecTrainingConfig)

    def weights_codec_of(self, r: int) -> str:
        """The codec of round ``r``'s weights exchange: its submissions, and the global
        update they average into (to model ``r + 1``)."""
        first = self.federation.weights_codec_first
        return first if r == 0 and first is not None else self.federation.weights_codec

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form with the YAML key names (``lambda``, ``codec_options``)."""
        return _to_dict(self)


# YAML names that are Python keywords or clash with builtins.
_ALIASES = {"lambda": "lmbda"}
_REVERSE = {v: k for k, v in _ALIASES.items()}


def _to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {
            _REVERSE.get(f.name, f.name): _to_dict(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
        }
    if isinstance(obj, list):
        return [_to_dict(v) for v in obj]
    return obj


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert YAML ints/strings where harmless."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, allowed))}")
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads 1e-4 as a string
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")  # pragma: no cover


def _build(cls: type, raw: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        name = _ALIASES.get(key, key)
        path = f"{where}.{key}" if where else key
        if name not in names:
            known = ", ".join(sorted(_REVERSE.get(n, n) for n in names))
            raise ConfigError(f"unknown config key {path!r} (known here: {known})")
        kwargs[name] = _coerce(value, hints[name], path)
    return cls(**kwargs)


def _validate(cfg: Config) -> Config:
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    d, p, t = cfg.data, cfg.data.partition, cfg.train
    need(cfg.scheme in SCHEMES, f"scheme: {cfg.scheme!r} is not one of {', '.join(SCHEMES)}")
    need(cfg.codec in CODECS, f"codec: {cfg.codec!r} is not one of {', '.join(CODECS)}")
    need(cfg.lmbda > 0, f"lambda: must be > 0, got {cfg.lmbda}")
    need(d.dataset in DATASETS, f"data.dataset: {d.dataset!r} is not one of {', '.join(DATASETS)}")
    need(
        not (d.client_roots or d.test_root) or not d.dataset.startswith("synthetic"),
        f"data.client_roots, data.test_root: dataset {d.dataset!r} is generated, not read",
    )
    need(d.client_roots != [], "data.client_roots: one folder per client, or null")
    need(
        d.image_size >= 32 and d.image_size % 16 == 0,
        "data.image_size: must be a multiple of 16, >= 32",
    )
    need(0 < d.val_fraction < 1, f"data.val_fraction: must be in (0, 1), got {d.val_fraction}")
    need(
        d.num_samples > 0 and d.test_samples > 0,
        "data.num_samples and data.test_samples must be > 0",
    )
    if p.kind == "counts":
        need(
            bool(p.counts) and all(c > 1 for c in p.counts),
            "data.partition.counts: a list of counts > 1",
        )
    else:
        need(p.clients >= 1, f"data.partition.clients: must be >= 1, got {p.clients}")
    if p.kind == "dirichlet":
        need(p.alpha > 0, f"data.partition.alpha: must be > 0, got {p.alpha}")
    need(cfg.model.base_width >= 1, "model.base_width: must be >= 1")
    need(
        cfg.model.num_classes is None or cfg.model.num_classes >= 2,
        "model.num_classes: must be >= 2",
    )
    need(
        cfg.model.foreground_prior is None or 0 < cfg.model.foreground_prior < 1,
        "model.foreground_prior: must be in (0, 1) or null",
    )
    need(t.rounds >= 1 and t.local_epochs >= 1, "train.rounds and train.local_epochs must be >= 1")
    need(t.batch_size >= 1, "train.batch_size: must be >= 1")
    need(t.lr > 0, "train.lr: must be > 0")
    need(t.max_batches is None or t.max_batches >= 1, "train.max_batches: must be >= 1")
    need(
        t.device in ("auto", "cpu", "cuda") or t.device.startswith("cuda:"),
        f"train.device: {t.device!r}",
    )
    need(cfg.federation.round_timeout > 0, "federation.round_timeout: must be > 0 seconds")
    cpr = cfg.federation.clients_per_round
    need(
        cpr is None
        or (isinstance(cpr, int) and cpr >= 1)
        or (isinstance(cpr, float) and 0 < cpr < 1),
        f"federation.clients_per_round: {cpr!r} must be a number of clients (>= 1) or a "
        "fraction between 0 and 1",
    )
    need(
        cfg.federation.variant == "v1" or cfg.federation.select == "last",
        "federation.select: 'best' needs variant v1; V2 trains one server model shared by "
        "every client, which cannot go back to each client's best epoch: select 'last'",
    )
    need(
        not cfg.federation.weights_error_feedback or cfg.federation.weights_codec != "float32",
        "federation.weights_error_feedback: the float32 exchange loses nothing to feed back; "
        "choose a lossy federation.weights_codec or set it to false",
    )
    need(
        cfg.federation.weights_codec_first is None or cfg.federation.weights_codec != "float32",
        "federation.weights_codec_first: the float32 exchange codes no round; choose a lossy "
        "federation.weights_codec or leave it unset",
    )
    keep = cfg.federation.weights_keep
    need(
        0 < keep <= 1 and (keep == 1 or cfg.federation.weights_codec == "int2"),
        f"federation.weights_keep: {keep!r} must lie in (0, 1], and below 1 only with "
        "federation.weights_codec int2 (the fraction of nonzero ternary levels)",
    )
    ct = cfg.codec_training
    need(
        t.gradient_threshold is None or t.gradient_threshold >= 0,
        f"train.gradient_threshold: must be >= 0 (.inf: never send), got {t.gradient_threshold}",
    )
    need(ct.freeze_round is None or ct.freeze_round >= 0, "codec_training.freeze_round: >= 0")
    need(
        ct.freeze_rate_change is None or ct.freeze_rate_change > 0,
        "codec_training.freeze_rate_change: must be > 0 (a fraction of the rate)",
    )
    need(
        ct.pretrained is not None or not ct.pretrained_unet,
        "codec_training.pretrained_unet: needs codec_training.pretrained (a run folder)",
    )
    o = cfg.codec_options
    need(o.latent_channels >= 1, "codec_options.latent_channels: must be >= 1")
    need(o.lr > 0 and o.aux_lr > 0, "codec_options.lr and aux_lr: must be > 0")
    need(o.entropy_lr is None or o.entropy_lr > 0, "codec_options.entropy_lr: must be > 0")
    need(o.init_scale > 0, f"codec_options.init_scale: must be > 0, got {o.init_scale}")
    need(
        o.latent_gain is None or o.latent_gain > 0,
        f"codec_options.latent_gain: must be > 0 or null, got {o.latent_gain}",
    )
    need(
        o.latent_gain_lr is None or o.latent_gain_lr > 0,
        "codec_options.latent_gain_lr: must be > 0",
    )
    need(o.clip_norm is None or o.clip_norm > 0, "codec_options.clip_norm: must be > 0")
    for key in ("local_steps", "warmup_steps", "sync_every"):
        need(getattr(o, key) >= 0, f"codec_options.{key}: must be >= 0, got {getattr(o, key)}")
    need(1 <= o.bits <= 8, f"codec_options.bits: must be 1-8, got {o.bits}")
    need(0 < o.topk_fraction <= 1, f"codec_options.topk_fraction: must be in (0, 1], got "
         f"{o.topk_fraction}")  # fmt: skip
    need(
        o.topk_value_bits is None or 1 <= o.topk_value_bits <= 8,
        f"codec_options.topk_value_bits: must be 1-8 or null (float16), got {o.topk_value_bits}",
    )
    need(0 <= o.randtopk_alpha < 1, f"codec_options.randtopk_alpha: must be in [0, 1), got "
         f"{o.randtopk_alpha}")  # fmt: skip
    need(
        not (o.error_feedback and cfg.codec in CLASSIC_CODECS and cfg.scheme != "nc"
             and cfg.federation.variant == "v2"),
        "codec_options.error_feedback: not with federation.variant v2, whose one server replica "
        "would add a client's residual to the tensors it sends another",
    )  # fmt: skip
    return cfg


def parse_value(text: str) -> Any:
    """Parse one ``--set`` value with YAML rules (``3`` -> int, ``[1, 2]`` -> list)."""
    return yaml.safe_load(text)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a raw config mapping."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, text = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a mapping")
        node[parts[-1]] = parse_value(text)
    return raw


def from_dict(raw: dict[str, Any] | None) -> Config:
    """Build and validate a :class:`Config` from a raw mapping."""
    return _validate(_build(Config, raw or {}, ""))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults), apply ``--set`` overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    return from_dict(apply_overrides(raw, overrides or []))


def dump_config(cfg: Config) -> str:
    """The resolved configuration as YAML."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
