"""The fusion families, in the order they rewrite a graph: the one list the pass manager runs.

Adding a family: write its module (a ``FusionFamily``), its kernel module and its tests, then add
its instance to ``FAMILIES`` below (and import it).
"""

from __future__ import annotations

from fusion_passes.adaln import ADALN, RESIDUAL_ADALN
from fusion_passes.conv1d import CAUSAL_CONV1D
from fusion_passes.family import FusionFamily
from fusion_passes.linear_gelu import LINEAR_GELU
from fusion_passes.rope import ROPE

# The order matters where two families can take parts of one chain:
# - residual_adaln before adaln: its chain (a residual sum, then a modulated norm of it) contains an
#   adaln chain; adaln first would take the norm alone and leave the sum and its store unfused.
# - rope after the AdaLN families: it reads the graph they leave; an RMSNorm they take (modulated,
#   or normalizing a residual sum used later) is fused there, and rope absorbs the norms left.
# - causal_conv1d takes no op the others take: its place in the list changes nothing.
# - linear_gelu last: no other family reads a Linear's GEMM.
FAMILIES: tuple[FusionFamily, ...] = (RESIDUAL_ADALN, ADALN, CAUSAL_CONV1D, ROPE, LINEAR_GELU)


def families() -> dict[str, FusionFamily]:
    """Every fusion family by name, in application order."""
    return {family.name: family for family in FAMILIES}
