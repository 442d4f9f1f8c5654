"""Transformer blocks left out of one call (ComfyUI's SkipLayerGuidanceDiT patches a block with a
function that hands its inputs back): a shallow view of a diffusers transformer whose listed
double / single blocks pass both streams on unchanged. The shared transformer is not touched, so
a run beside this one still sees every block."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from torch import nn


class _PassThrough(nn.Module):
    """A diffusers block that does nothing: (text, image) back as they came."""

    def forward(
        self, hidden_states: Any, encoder_hidden_states: Any, *args: Any, **kwargs: Any
    ) -> tuple[Any, Any]:
        return encoder_hidden_states, hidden_states


def _replaced(blocks: nn.ModuleList, skipped: Sequence[int]) -> nn.ModuleList:
    wanted = set(skipped)
    return nn.ModuleList([_PassThrough() if i in wanted else block for i, block in enumerate(blocks)])


def with_blocks_skipped(
    transformer: nn.Module,
    double: Sequence[int] = (),
    single: Sequence[int] = (),
    single_name: str | None = None,
) -> nn.Module:
    """`transformer` with `transformer_blocks[i]` (i in double) and `<single_name>[i]` (i in single)
    passing through; an index past the last block is ignored, as ComfyUI ignores it."""
    if not double and not (single and single_name):
        return transformer
    view = copy.copy(transformer)
    view._modules = dict(transformer._modules)  # the view's own child table
    if double:
        view._modules["transformer_blocks"] = _replaced(transformer.transformer_blocks, double)
    if single and single_name:
        view._modules[single_name] = _replaced(getattr(transformer, single_name), single)
    return view
