"""Trace a model into the chain of layers the certifier runs, from its modules alone.

Only `nn.Sequential` containers (with Sequential's own forward) are opened; every other module
must have a registered transformer. Nothing is inferred from tensor sizes: a Flatten is
certified because it is a module in the chain, not because a Linear follows a convolution.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from certify.transformers import Transformer, UnsupportedModuleError, transformer_for


@dataclass(frozen=True)
class Step:
    """One layer of the traced chain: its position, dotted path in the model, and semantics."""

    index: int
    path: str
    module: nn.Module
    transformer: Transformer


def trace(model: nn.Module) -> tuple[Step, ...]:
    """The model as a flat chain of supported layers; raises UnsupportedModuleError otherwise."""
    leaves: list[tuple[str, nn.Module]] = []

    def visit(module: nn.Module, path: str) -> None:
        if isinstance(module, nn.Sequential):
            if type(module).forward is not nn.Sequential.forward:
                raise UnsupportedModuleError(
                    f"cannot certify {path or 'the model'} ({type(module).__name__}): a Sequential "
                    "subclass with its own forward cannot be traced module by module"
                )
            for name, child in module.named_children():
                visit(child, f"{path}.{name}" if path else name)
        else:
            leaves.append((path or "<model>", module))

    visit(model, "")
    if not leaves:
        raise UnsupportedModuleError("cannot certify an empty model")
    steps = []
    for i, (path, module) in enumerate(leaves):
        t = transformer_for(module, f"#{i} at '{path}'")
        steps.append(Step(i, path, module, t))
    return tuple(steps)
