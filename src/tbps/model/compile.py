"""``torch.compile`` for the training step, in one place: the module (``compile: true``),
``tbps bench --compile`` and the test that pins "no graph break, no recompilation" all go
through ``compile_step``.

Captions are trimmed per batch to their longest (``collate_trimmed``), so the token
dimension changes from step to step: ``mark_token_dim_dynamic`` marks it dynamic before the
first compiled call, so that dynamo compiles once for every length instead of once static
and again dynamic at the first new length (which doubled the compile time).

Two dynamo settings are scoped to the compiled call: MLM scores only the masked positions
(a boolean index, whose size depends on the data) and CRUE's queues advance by a pointer;
``capture_dynamic_output_shape_ops`` and ``capture_scalar_outputs`` let dynamo trace both
instead of breaking the graph there.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from ..data.annotations import ANNOTATIONS

DYNAMO_SETTINGS = {"capture_dynamic_output_shape_ops": True, "capture_scalar_outputs": True}


def compile_step(fn: Callable, backend: str = "inductor", fullgraph: bool = False) -> Callable:
    compiled = torch.compile(fn, backend=backend, fullgraph=fullgraph)

    @functools.wraps(fn)
    def step(*args, **kwargs):
        with torch._dynamo.config.patch(**DYNAMO_SETTINGS):
            return compiled(*args, **kwargs)

    return step


def mark_token_dim_dynamic(batch: dict) -> None:
    """Marks the token dimension of the caption ids and of the annotations aligned with them
    (the tensors ``collate_trimmed`` cuts) dynamic."""
    for key in ("caption_ids", *ANNOTATIONS):
        if key in batch:
            torch._dynamo.maybe_mark_dynamic(batch[key], 1)
