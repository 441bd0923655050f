"""Rotary embedding, with the q/k RMSNorm before it, in every spelling.

Models write RoPE in many ways: tables repeated per pair and ``stack([-x_odd, x_even])``
(interleaved), ``cat([-x2, x1])`` (half-split, "neox"), ``view_as_complex(x) * freqs``, slice
assignment ``out[..., 0::2] = ...`` (``slice_scatter`` in the graph), tables gathered by position
ids, on all dims or the first R. Fixed patterns cannot enumerate them, so this family proves what
a chain computes instead, in stages, one module each:

- ``columns``: the column interpreter. It follows a chain from its input ``x`` through views,
  casts, negation, additions, products with tables and complex multiplication, tracking every
  output column as a sum of terms ``±x[column] * table[k]``.
- ``recognize``: a chain whose columns are exactly ``a * cos_a - b * sin_a`` and
  ``b * cos_b + a * sin_b`` over pairs ``(a, b)`` (plus untouched columns after the rotated ones)
  is a rotation, whatever its spelling; the tables it read, and where, become the op's operands.
- ``streams``: rotations joined by a ``cat`` of streams along the sequence, before the rotation
  (FLUX's joint text + image) or after it (Qwen-Image, HunyuanVideo), form one group, and the
  RMSNorm producing each stream's ``x`` is absorbed when every use of it is inside the group.
- ``profitability``: the CUDA size rule, apart from what is legal to fuse.
- ``family``: the family's stages (``fusion_passes.family``): candidates, legality, plan and the
  replacement of each group by one ``fusion_passes::rope`` call writing the joint output. ``nodes`` holds the graph-node questions the stages share.
"""

from fusion_passes.rope.family import ROPE

__all__ = ["ROPE"]
