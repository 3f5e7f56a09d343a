"""The masked-LM forward and its loss as one torch.compile graph (the backward follows through AOTAutograd).

    model = compile_model(MosaicBertForMaskedLM(cfg))        # in place: parameter and state-dict names unchanged
    out = model(**prepare_inputs(batch, cfg, device), mlm_output="loss")
    out.loss.backward()

Why one graph: an eager megabert step launches ~590 kernels from Python (autocast casts, bias-gradient sums, each
fused kernel), and at BERT sizes the GPU finishes many of them faster than Python issues them. Compiled, Inductor
fuses that elementwise work around the matmuls and the attention kernel, and the whole forward and backward run
from generated code.

What makes it one graph (fullgraph=True, so any break is an error, not a slow path):
  * the unpadding bookkeeping (indices, cu_seqlens, max_seqlen) and the masked-token rows come precomputed from
    the CPU (megabert.model.inputs.prepare_inputs / pack_inputs): the forward has no nonzero, no .item(), nothing
    that waits for the device or branches on its data;
  * the Triton attention is a custom op with a fake implementation and its own backward (one node); the fused
    MLM loss is another, and so is the Triton GeGLU (Inductor's code for its backward is 3x slower;
    MEGABERT_COMPILE_TRITON_OPS=0 traces its reference instead); dropout + add + LayerNorm traces its reference
    formula so Inductor fuses it with what surrounds it;
  * the shapes are dynamic: one compilation serves every token count T, masked count M, max_seqlen and batch
    shape -- nothing recompiles per batch.
Dropout inside the graph draws its random numbers on the device (Inductor's Philox seeds), so every step gets fresh
masks without a host synchronisation.

MEGABERT_COMPILE=0 makes compile_model return the model as it is (eager: CPU debugging, ablations).
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import torch
import torch.fx.experimental._config
import torch.nn as nn

log = logging.getLogger(__name__)


def compile_enabled() -> bool:
    """False when MEGABERT_COMPILE=0: compile_model then leaves the model eager."""
    return os.environ.get("MEGABERT_COMPILE", "1") != "0"


def compile_model(model: nn.Module, backend: str = "inductor", mode: Optional[str] = None) -> nn.Module:
    """Compiles `model`'s forward (loss included) in place as one dynamic-shape graph (module docstring) and
    returns it.

    backend/mode: as torch.compile's ("aot_eager" traces without generating kernels, as the CPU tests do)."""
    if not compile_enabled():
        log.info("MEGABERT_COMPILE=0: the model runs eagerly")
        return model
    # The forward alone, not the module call: hooks a wrapper registers (DeepSpeed's engine counts micro-steps in
    # a forward hook) stay outside the graph, so their Python state never becomes a guard that recompiles.
    compiled = torch.compile(model.forward, backend=backend, mode=mode, dynamic=True, fullgraph=True)
    model.forward = _WithoutDuckShapes(compiled)
    model._megabert_compiled = True
    return model


class _WithoutDuckShapes:
    """Calls the compiled model with duck shaping off. Duck shaping gives two sizes that are equal when a graph is
    traced one symbol (and a guard that they stay equal): with varlen batches, the token count that happens to
    equal another size in the first batch -- say, the offset of the attention mask in the packed buffer -- would
    force a recompilation at the next batch. The setting only matters while tracing; a call costs ~30 us more."""

    def __init__(self, compiled):
        self.compiled = compiled

    def __call__(self, *args, **kwargs):
        with torch.fx.experimental._config.patch(use_duck_shape=False):
            return self.compiled(*args, **kwargs)


def is_compiled(model: nn.Module) -> bool:
    """Whether compile_model was applied to `model`."""
    return getattr(model, "_megabert_compiled", False)
