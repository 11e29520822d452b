"""Split training without compression is centralised training of the unsplit U-Net."""

from __future__ import annotations

import asyncio

import torch

from splitfedzip.config import load_config
from splitfedzip.experiments.train import embedded_parties
from splitfedzip.metrics import soft_dice_loss
from splitfedzip.models import UNet, split_unet
from splitfedzip.parties.messages import Ids

BATCHES = 3
TINY = [
    "data.image_size=32", "data.num_samples=12", "data.test_samples=4", "model.base_width=4",
    "data.partition={kind: iid, clients: 1}", "train.batch_size=2", "train.lr=1e-3",
    f"train.max_batches={BATCHES}", "train.seed=5", "train.device=cpu", "scheme=nc",
]  # fmt: skip


def test_nc_split_training_equals_centralised_training() -> None:
    cfg = load_config(None, TINY)
    parties = embedded_parties(cfg, torch.device("cpu"))
    client = parties.clients[0]
    batches: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = client.train_batch

    async def recording(ids: Ids, x: torch.Tensor, y: torch.Tensor) -> float:
        batches.append((x.clone(), y.clone()))
        return await real(ids, x, y)

    client.train_batch = recording

    async def one_epoch() -> None:
        # The protocol up to the first local epoch: join, global model 0, codec sync, training.
        await client.join()
        ids = Ids(round=0, client=0)
        await client.begin_round(ids)
        await client.train_epoch(ids.at(epoch=1))

    # The reference starts from the same weights: the U-Net every party builds from the seed
    # (the client installs the federation server's global model 0, the main server builds its
    # replica from the same seed). nc's codecs are `none`: nothing draws random numbers.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        unet = UNet(3, parties.data.num_classes, cfg.model.base_width)
    reference = split_unet(unet)
    server = parties.main.peers  # filled in by the join
    initial = {k: v.detach().clone() for k, v in unet.named_parameters()}

    asyncio.run(one_epoch())
    assert len(batches) == BATCHES
    unet.train()
    opt = torch.optim.Adam(unet.parameters(), lr=cfg.train.lr)
    for x, y in batches:
        soft_dice_loss(unet(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    split = {
        "front_end": (client.model.front_end, reference.front_end),
        "server": (server[0].replica.model.server, reference.server),
        "back_end": (client.model.back_end, reference.back_end),
    }
    for part, (trained, expected) in split.items():
        got, want = trained.state_dict(), expected.state_dict()
        assert got.keys() == want.keys(), part
        for name, value in want.items():
            # Parameters and BatchNorm statistics alike; float32 rounding at most.
            torch.testing.assert_close(got[name], value, rtol=1e-6, atol=1e-7, msg=name)
    moved = max(float((v.detach() - initial[k]).abs().max()) for k, v in unet.named_parameters())
    assert moved > 1e-3  # the models did train, far beyond the tolerance
