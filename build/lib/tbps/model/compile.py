"""``torch.compile`` for the training step, in one place: the module (``compile: true``),
``tbps bench --compile`` and the test that pins "no graph break, no recompilation" all go
through ``compile_step``.

Two dynamo settings are scoped to the compiled call: MLM scores only the masked positions
(a boolean index, whose size depends on the data) and CRUE's queues advance by a pointer;
``capture_dynamic_output_shape_ops`` and ``capture_scalar_outputs`` let dynamo trace both
instead of breaking the graph there.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

DYNAMO_SETTINGS = {"capture_dynamic_output_shape_ops": True, "capture_scalar_outputs": True}


def compile_step(fn: Callable, backend: str = "inductor", fullgraph: bool = False) -> Callable:
    compiled = torch.compile(fn, backend=backend, fullgraph=fullgraph)

    @functools.wraps(fn)
    def step(*args, **kwargs):
        with torch._dynamo.config.patch(**DYNAMO_SETTINGS):
            return compiled(*args, **kwargs)

    return step
