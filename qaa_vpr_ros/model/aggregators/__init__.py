"""Aggregation heads behind one interface, and a registry that builds them by name.

Every head takes ``num_channels`` (the backbone width C_o) as a constructor argument, has an
``out_dim`` attribute and maps ``forward(features (B, C_o, h, w), cls_token (B, C_o))`` to
(B, out_dim) L2-normalised descriptors.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from ..qaa import QAAAggregator
from .boq import BoQ
from .gem import GeM
from .netvlad import NetVLAD
from .optimal_transport import log_optimal_transport, optimal_transport_weights
from .qaa_variants import QAAOptimalTransport, QAASoftmax
from .salad import SALAD

AGGREGATORS: dict[str, type[nn.Module]] = {
    "QAA": QAAAggregator,
    "QAA-Softmax": QAASoftmax,
    "QAA-OT": QAAOptimalTransport,
    "GeM": GeM,
    "NetVLAD": NetVLAD,
    "SALAD": SALAD,
    "BoQ": BoQ,
}

# The authors' configs select the ablation with agg_arch "QAA" and this key.
_QAA_SCORE_NORMS = {"none": "QAA", "softmax": "QAA-Softmax", "ot": "QAA-OT"}


def _canonical_name(agg_arch: str) -> str:
    names = {name.lower(): name for name in AGGREGATORS}
    try:
        return names[agg_arch.lower()]
    except KeyError:
        raise ValueError(f"unknown agg_arch {agg_arch!r}; valid: {', '.join(AGGREGATORS)}") from None


def _qaa_family_name(name: str, agg_config: dict[str, Any]) -> str:
    """Resolves ``score_norm`` (the authors' switch between QAA and its ablation) to a head name."""
    score_norm = agg_config.pop("score_norm", None)
    if score_norm is None:
        return name
    chosen = _QAA_SCORE_NORMS.get(str(score_norm).lower())
    if chosen is None:
        raise ValueError(f"agg_config score_norm={score_norm!r}; valid: {', '.join(_QAA_SCORE_NORMS)}")
    if name != "QAA" and chosen != name:
        raise ValueError(f"agg_config score_norm={score_norm!r} contradicts agg_arch {name!r}")
    return chosen


def build_aggregator(agg_arch: str, agg_config: dict[str, Any]) -> nn.Module:
    """Builds the head named ``agg_arch`` (case-insensitive) with keyword arguments ``agg_config``.

    Raises:
        ValueError: unknown ``agg_arch``, or a config key the head does not take (both name the
            culprit and list what is valid).
    """
    name = _canonical_name(agg_arch)
    config = dict(agg_config)
    if name.startswith("QAA"):
        name = _qaa_family_name(name, config)
    head = AGGREGATORS[name]
    valid = [p for p in inspect.signature(head).parameters if p not in ("self", "score_norm")]
    unknown = sorted(set(config) - set(valid))
    if unknown:
        raise ValueError(
            f"agg_config keys {unknown} are not supported by {name}; valid keys: {', '.join(valid)}"
        )
    return head(**config)


__all__ = [
    "AGGREGATORS",
    "BoQ",
    "GeM",
    "NetVLAD",
    "QAAAggregator",
    "QAAOptimalTransport",
    "QAASoftmax",
    "SALAD",
    "build_aggregator",
    "log_optimal_transport",
    "optimal_transport_weights",
]
