"""Starting a party's model from an earlier run's checkpoints (two-stage training, Ayad M1).

``codec_training.pretrained`` names a run's output folder; its ``checkpoints/`` hold the
tested global models, ``client_global.pt`` (front end, back end, the clients' codecs) and
``server_global.pt`` (server part, the main server's codecs). Every learned codec of this run
is loaded from there, and the U-Net too with ``pretrained_unet``. A head trained for another
number of classes is left freshly initialised, and a warning says so; any other mismatch is an
error naming the file and the tensor.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from ..codecs.base import ENTROPY_TABLES
from ..config import Config, ConfigError

#: Checkpoint name -> (its codecs, its U-Net parts), as module attribute names.
PARTS = {
    "client_global": (("s1_feature", "s2_gradient"), ("front_end", "back_end")),
    "server_global": (("s2_feature", "s1_gradient"), ("server",)),
}
#: The head's parameters: the only U-Net tensors whose shape depends on the data set.
HEAD = "back_end.head."


class PretrainedError(ConfigError):
    """The earlier run's checkpoints do not fit this run's model."""


class HeadReinitialised(UserWarning):
    """The earlier run's head was trained for another number of classes and is not loaded."""


def load_pretrained(module: nn.Module, cfg: Config, name: str) -> None:
    """Load checkpoint ``name`` of ``codec_training.pretrained`` into ``module`` (a no-op when
    none is configured): every learned codec, and with ``pretrained_unet`` the U-Net part."""
    ct = cfg.codec_training
    if ct.pretrained is None:
        return
    path = Path(ct.pretrained) / "checkpoints" / f"{name}.pt"
    if not path.is_file():
        raise PretrainedError(
            f"codec_training.pretrained: {path} not found (give an earlier run's output folder)"
        )
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which
        raise PretrainedError(f"codec_training.pretrained: {path} is not a checkpoint: {e}") from e
    codecs, unet = PARTS[name]
    wanted = [c for c in codecs if getattr(module, c).learned]
    if ct.pretrained_unet:
        wanted += unet
    prefixes = tuple(f"{p}." for p in wanted)
    chosen, head = {}, []
    for key, value in module.state_dict().items():
        if not key.startswith(prefixes) or key.endswith(ENTROPY_TABLES):
            continue
        if key not in saved:
            raise PretrainedError(
                f"codec_training.pretrained: {path} has no {key!r}: that run used another "
                "codec, scheme, codec_options.latent_channels or model.base_width"
            )
        if saved[key].shape != value.shape:
            if key.startswith(HEAD):
                head.append(key)
                continue
            raise PretrainedError(
                f"codec_training.pretrained: {path}: {key!r} is {tuple(saved[key].shape)}, "
                f"this run's is {tuple(value.shape)}"
            )
        chosen[key] = saved[key]
    module.load_state_dict(chosen, strict=False)
    if head:
        # A warning, not a log line: every client model and the federation server's template
        # load the same checkpoint, and Python shows a warning once per process.
        trained = saved[f"{HEAD}weight"].shape[0]
        now = module.state_dict()[f"{HEAD}weight"].shape[0]
        warnings.warn(
            f"{path}: the head was trained for {trained} classes, this run has {now}: "
            "it is re-initialised",
            HeadReinitialised,
            stacklevel=2,
        )
