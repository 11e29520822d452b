"""``splitfedzip reproduce``: the paper's experiments at an affordable scale, and every figure.

``plan`` expands a preset into runs, ``runner`` trains (or reuses) them, ``aggregate`` turns
them into curves and BD, ``figures`` and ``report`` draw and describe them; ``pipeline`` is
the whole.
"""

from .pipeline import Reproduction, reproduce
from .plan import FigureOptions, Plan, Preset, Run, load_preset, make_plan

__all__ = [
    "FigureOptions",
    "Plan",
    "Preset",
    "Reproduction",
    "Run",
    "load_preset",
    "make_plan",
    "reproduce",
]
