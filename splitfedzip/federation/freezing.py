"""When the codecs stop training: from a fixed round, or once their rate has settled.

The federation server holds one :class:`FreezeRule` for the run, feeds it each round's
training rates (as the clients report them with their submissions) and tells every client,
with the global model, whether the round is frozen; each client relays that to the main
server, as it relays the round's participants. Once frozen, always frozen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import CodecTrainingConfig


@dataclass
class FreezeRule:
    """``freeze_round`` and ``freeze_rate_change`` of ``codec_training``, over the rounds."""

    cfg: CodecTrainingConfig
    #: round -> the round's training BPP-T, weighted by the clients' training samples
    rates: dict[int, float] = field(default_factory=dict)
    #: the first round trained with frozen codecs by the rate rule (None: not yet)
    settled_from: int | None = None

    @property
    def active(self) -> bool:
        """Whether a rule is configured (the messages carry ``frozen`` and ``bpp`` only then)."""
        return self.cfg.freeze_round is not None or self.cfg.freeze_rate_change is not None

    @property
    def needs_rates(self) -> bool:
        """Whether the clients must report their round's training rate."""
        return self.cfg.freeze_rate_change is not None

    def frozen(self, r: int) -> bool:
        """Whether round ``r`` trains with every codec frozen."""
        fixed = self.cfg.freeze_round
        if fixed is not None and r >= fixed:
            return True
        return self.settled_from is not None and r >= self.settled_from

    def observe(self, r: int, reports: list[tuple[float, int]]) -> None:
        """Round ``r`` closed with these (BPP-T, training samples) reports."""
        total = sum(n for _, n in reports)
        if not reports or total <= 0 or self.cfg.freeze_rate_change is None:
            return
        self.rates[r] = sum(b * n for b, n in reports) / total
        before = self.rates.get(r - 1)
        if self.settled_from is None and before is not None and before > 0:
            # Relative change of the rate between two consecutive rounds, as the paper's
            # "until the rate at S1 and S2 stabilises".
            if abs(self.rates[r] - before) / before < self.cfg.freeze_rate_change:
                self.settled_from = r + 1
