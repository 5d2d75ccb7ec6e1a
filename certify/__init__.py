"""Certification engine: zonotope (DeepZono) and interval domains, certified accuracy and loss.

Pure torch, no Flower. The server's gate calls `certify_dataset`; an adaptive attack or
certified training differentiates `certified_margins` (or `certify_dataset(...,
differentiable=True).certified_loss`). Layers are supported through `transformers.register`.
"""

from certify.analysis import certified_margins, linf_region, output_bounds, propagate
from certify.domains import Interval, Zonotope
from certify.metrics import DEFAULT_BUDGET_BYTES, CertResult, certify_dataset
from certify.trace import trace
from certify.transformers import TRANSFORMERS, Transformer, UnsupportedModuleError, register

__all__ = [
    "DEFAULT_BUDGET_BYTES",
    "TRANSFORMERS",
    "CertResult",
    "Interval",
    "Transformer",
    "UnsupportedModuleError",
    "Zonotope",
    "certified_margins",
    "certify_dataset",
    "linf_region",
    "output_bounds",
    "propagate",
    "register",
    "trace",
]
