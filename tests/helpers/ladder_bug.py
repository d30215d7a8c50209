"""A planted compile-only bug for the vLLM ladder tests: an Inductor post-grad pass.

Given to vLLM as ``compilation_config={"inductor_passes": {"post_grad_custom_post_pass":
"ladder_bug.perturb_layer1_act"}}`` (this folder on PYTHONPATH). vLLM hands
``inductor_compile_config`` to Inductor only when the backend is Inductor, so eager and
``compile-no-inductor`` rungs never run it: the bug exists only in compiled-by-Inductor
engines, like a real miscompilation.

It scales the output of layer 1's activation (SiluAndMul) by ``1 + EPS``. The activation
is not an anchor, so the first divergent anchor is the next one: ``layers.1.down``.
"""

from __future__ import annotations

import sys

import torch

TARGET = "layers.1.mlp.act_fn"
EPS = 1e-2


def _module_path(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    # The innermost module; Dynamo names look like "L['self'].layers.1.mlp.act_fn".
    return str(list(stack.values())[-1][0])


def perturb_layer1_act(graph: torch.fx.Graph) -> None:
    """Multiply the last value computed inside ``TARGET`` by ``1 + EPS``."""
    inside = [n for n in graph.nodes if n.op == "call_function" and _module_path(n).endswith(TARGET)
              and not str(n.target).startswith("tensortap.")]  # never a capture tap
    if not inside:
        print(f"ladder_bug: no node of {TARGET} in this graph", file=sys.stderr)
        return
    last = inside[-1]
    with graph.inserting_after(last):
        scaled = graph.call_function(torch.ops.aten.mul.Tensor, (last, 1.0 + EPS))
    scaled.meta.update(last.meta)
    last.replace_all_uses_with(scaled, delete_user_cb=lambda user: user is not scaled)
    print(f"ladder_bug: scaled {last.name} ({TARGET}) by {1.0 + EPS}", file=sys.stderr)
