"""``splitfedzip demo``: nc, f-ae, fg-ae and fg-ae with coded weights on synthetic lesions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import Config, load_config
from ..metrics.link import DEFAULT_LINK
from .train import run_embedded, write_outputs

#: The demo's base configuration (128x128 synthetic lesions, two clients, a small U-Net).
DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
#: Subfolder -> overrides of the base configuration. ``nc`` compresses nothing: it is the
#: reference the others' reductions are measured against. f-ae and fg-ae compress the split
#: points and exchange the weights exactly (float32), as the paper; fg-ae-int2 is fg-ae with
#: the weights exchange coded too (ternary updates with error feedback, round 0's in int4:
#: docs/protocol.md).
#: The exchange is each variant's own, whatever ``--set`` says (a weights option set for the
#: coded variant, e.g. ``federation.weights_keep``, must not reach the exact ones).
EXACT = [
    "federation.weights_codec=float32",
    "federation.weights_error_feedback=false",
    "federation.weights_keep=1",
    "federation.weights_codec_first=null",
]
CODED = [
    "federation.weights_codec=int2",
    "federation.weights_error_feedback=true",
    "federation.weights_codec_first=int4",
]
VARIANTS = {
    "nc": ["scheme=nc", *EXACT],
    "f-ae": ["scheme=f", "codec=ae", *EXACT],
    "fg-ae": ["scheme=fg", "codec=ae", *EXACT],
    "fg-ae-int2": ["scheme=fg", "codec=ae", *CODED],
}


def demo_configs(overrides: list[str] | None = None, base: Path = DEMO_CONFIG) -> dict[str, Config]:
    """The configurations the demo runs, by variant (``base``: the file they start from)."""
    return {
        name: load_config(base, [*(overrides or []), *extra]) for name, extra in VARIANTS.items()
    }


def run_demo(
    out: Path,
    overrides: list[str] | None = None,
    progress: bool = True,
    link: str = DEFAULT_LINK,
) -> dict:
    """Run every variant into ``out/<name>`` and return their summaries."""
    summaries = {}
    for name, cfg in demo_configs(overrides).items():
        print(f"== {name}: scheme={cfg.scheme} codec={cfg.codec} lambda={cfg.lmbda}", flush=True)
        result = run_embedded(cfg, progress=progress, link=link)
        write_outputs(cfg, result, out / name)
        summaries[name] = result.summary
    return summaries


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def demo_table(summaries: dict[str, dict[str, Any]]) -> str:
    """Side-by-side table, with traffic reductions relative to ``nc``."""
    nc = summaries.get("nc")
    rows = [
        ("test MJI", "test_mji"), ("test Dice", "test_dice"), ("BPP-S1", "bpp_s1"),
        ("BPP-S2", "bpp_s2"), ("BPP-T", "bpp_t"), ("BPP-T (est)", "bpp_t_est"),
        ("CR-S1", "cr_s1"), ("CR-S2", "cr_s2"), ("feature bytes", "bytes_split_features"),
        ("gradient bytes", "bytes_split_gradients"), ("split bytes", "bytes_split"),
        ("federation bytes", "bytes_federation"),
        ("federation as float32", "bytes_federation_uncoded"), ("total bytes", "bytes_total"),
        ("seconds", "wall_seconds"),
    ]  # fmt: skip
    names = list(summaries)
    lines = [f"{'':<22}" + "".join(f"{n:>14}" for n in names)]
    for label, key in rows:
        lines.append(f"{label:<22}" + "".join(f"{_fmt(summaries[n].get(key)):>14}" for n in names))
    link = next(iter(summaries.values())).get("link")
    if link is not None:
        cells = [f"{s['link']['seconds']:.1f}" for s in summaries.values()]
        lines.append(f"{'link s @ ' + link['link']:<22}" + "".join(f"{c:>14}" for c in cells))
    if nc:
        for label, key in (
            ("feature reduction", "bytes_split_features"),
            ("split reduction", "bytes_split"),
            ("total reduction", "bytes_total"),
        ):
            cells = [f"{nc[key] / s[key]:.1f}x" if s.get(key) else "-" for s in summaries.values()]
            lines.append(f"{label:<22}" + "".join(f"{c:>14}" for c in cells))
        cells = [f"{s['test_mji'] - nc['test_mji']:+.3f}" for s in summaries.values()]
        lines.append(f"{'MJI vs nc':<22}" + "".join(f"{c:>14}" for c in cells))
    return "\n".join(lines)
