"""FLOP counting for the heads, with the convention the QAA authors used for their 2.29 GFLOPs.

The authors measured with Lightning's ``measure_flops``, i.e. ``torch.utils.flop_counter``:
2 FLOPs per multiply-accumulate of matmuls, convolutions and attention; element-wise ops,
softmax, normalisation and Sinkhorn iterations count 0. Two gaps of that counter are closed here
so that what runs is what is counted:

- on CPU, ``scaled_dot_product_attention`` runs ``_scaled_dot_product_flash_attention_for_cpu``,
  which the counter has no formula for (it would silently count QKᵀ and AV as 0);
- in eval mode without autograd, ``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer`` may
  take fused "fast path" kernels the counter cannot see, so the fast path is switched off.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

_aten = torch.ops.aten


def _sdpa_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None,
                **kwargs: Any) -> int:
    """QKᵀ and AV of attention: 2 * B * heads * L_q * L_k * (d_qk + d_v)."""
    batch, heads, len_q, dim_qk = query_shape
    return 2 * batch * heads * len_q * key_shape[-2] * (dim_qk + value_shape[-1])


_CPU_FLASH_ATTENTION = getattr(_aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_EXTRA_FORMULAS = {_CPU_FLASH_ATTENTION: _sdpa_flops} if _CPU_FLASH_ATTENTION is not None else {}


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one call (2 per multiply-accumulate), in total, per module and per aten op."""

    total: int
    by_module: dict[str, int]
    by_op: dict[str, int]

    @property
    def gflops(self) -> float:
        return self.total / 1e9


@contextmanager
def mha_fastpath_disabled() -> Iterator[None]:
    """Keeps attention layers on their op-by-op path (fused kernels are opaque to counters/exporters)."""
    if not hasattr(torch.backends, "mha"):  # torch < 2.2: no switch
        yield
        return
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def count_flops(fn: Callable[[], Any]) -> FlopCount:
    """Counts the FLOPs of calling ``fn()`` once, in the caller's grad mode.

    Use ``torch.no_grad()`` for inference counts, not ``torch.inference_mode()``: torch's module
    tracker (per-module counts) fails there on modules that take parameters as inputs.
    """
    with mha_fastpath_disabled(), FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS) as counter:
        fn()
    counts = counter.get_flop_counts()
    by_op = {str(op): int(n) for op, n in counts.get("Global", {}).items()}
    by_module = {name: int(sum(ops.values())) for name, ops in counts.items() if name != "Global"}
    return FlopCount(total=int(counter.get_total_flops()), by_module=by_module, by_op=by_op)
