"""Stream grouping and norm absorption: which recognized rotations one fused call replaces.

Rotations are grouped into streams of one call where a ``cat`` along the sequence joins them:
after the rotations (Qwen-Image: each stream rotated with its own table; HunyuanVideo: rotated
image tokens and unrotated text tokens, or a rotated prefix of one normalized sequence) or before
one rotation (FLUX's joint text + image: one table over the joint sequence, each stream reading
its rows). The q/k RMSNorm each stream reads (per head over D, or over all heads before the head
split) is then absorbed, with the graph's eps, weight and rounding points, when every use of its
output is inside the group.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any

import torch

from fusion_passes.compat import FakeTensorMode, Match, PatternExpr, is_match
from fusion_passes.norms import EPS_SENTINEL, NORM_FORMS, TRACE_DTYPE, NormForm, normalized
from fusion_passes.patterns import generalize, traced_pattern, with_signature
from fusion_passes.rope.nodes import data_users, same_sizes, value_of
from fusion_passes.rope.recognize import Rotation
from fusion_passes.report import describe_value

aten = torch.ops.aten


# --- q/k RMSNorm --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Norm:
    """An RMSNorm whose output a stream reads: its input, weight, eps and rounding points."""

    output: torch.fx.Node
    input: torch.fx.Node
    weight: torch.fx.Node | None
    eps: float | torch.fx.Node  # a graph value where the model adds a tensor eps (not absorbed)
    rounding: str
    nodes: frozenset[torch.fx.Node]
    form: str


def _norm_rounding(form: NormForm, precision: str) -> str:
    # The op's rounding argument for a norm of this form computed at this precision.
    if precision == "fp32":
        return "none"
    return "after_weight" if form.half_rounding == "after_affine" else "before_and_after_weight"


@functools.cache
def _norm_patterns() -> list[tuple[PatternExpr, NormForm, str]]:
    # Every RMSNorm form at fp32 and half precision, traced once.
    patterns = []
    with FakeTensorMode():
        for form, precision in itertools.product((f for f in NORM_FORMS if f.norm == "rms"), ("fp32", "half")):
            params = ("x", "eps", *form.affine)

            def search(form: NormForm = form, precision: str = precision, **operands: Any) -> torch.Tensor:
                return normalized(form=form, precision=precision, bias=None, weight=operands.pop("weight", None), **operands)

            examples = [
                EPS_SENTINEL if name == "eps" else torch.empty((2, 8, 16) if name == "x" else (16,), dtype=TRACE_DTYPE)
                for name in params
            ]
            pattern = generalize(traced_pattern(with_signature(search, params), examples, {"eps": EPS_SENTINEL}))
            patterns.append((pattern, form, precision))
    return patterns


def match_norm(node: torch.fx.Node) -> Norm | None:
    """The RMSNorm over the last dim whose output is ``node``, if it is one."""
    if node.op != "call_function":
        return None
    for pattern, form, precision in _norm_patterns():
        match = pattern.match(node)
        if not is_match(match):
            continue
        assert isinstance(match, Match)
        source = match.kwargs["x"]
        rounding = _norm_rounding(form, precision)
        if rounding != "none" and value_of(node).dtype != value_of(source).dtype:
            continue
        return Norm(
            node, source, match.kwargs.get("weight"), match.kwargs["eps"], rounding,
            frozenset(match.nodes), f"{form.name}/{precision}",
        )
    return None


# --- Streams and groups ------------------------------------------------------------------------


@dataclasses.dataclass
class Stream:
    """One stream of a fused call: the graph value it replaces and how it is computed."""

    value: torch.fx.Node  # the unfused graph's value of these tokens (before the joint output)
    rotation: Rotation | None
    # For a stream cut from the input of a rotation over a joint sequence: the table rows it reads.
    table_rows: tuple[int, int] | None = None
    norm: Norm | None = None
    # How the stream's input is cut from the norm's input: ("slice", dim, start, end) or
    # ("split_heads", shape), or None for the norm input itself.
    view: tuple[Any, ...] | None = None
    # Clones between the stream's input and its norm, replaced along with the norm.
    skipped_clones: set[torch.fx.Node] = dataclasses.field(default_factory=set)

    @property
    def input(self) -> torch.fx.Node:
        """What the stream reads: the rotation's input, or the plain value (a cut of a joint input)."""
        return self.rotation.x if self.rotation is not None and self.table_rows is None else self.value


def _norm_kind_of(view: tuple[Any, ...] | None) -> str:
    # A norm read through a head split is over all heads; otherwise over each head.
    return "heads" if view is not None and view[0] == "split_heads" else "head"


@dataclasses.dataclass
class Group:
    """Streams joined along ``cat_dim`` into the value of ``output``."""

    output: torch.fx.Node
    streams: list[Stream]
    cat_dim: int
    nodes: set[torch.fx.Node]  # graph nodes the fused call replaces (besides norms)
    # Why norms the streams read were not absorbed (None: absorbed, or no norm there).
    unabsorbed_norm_reason: str | None = None

    @property
    def rotations(self) -> list[Rotation]:
        """The distinct rotations of the streams."""
        return list({id(s.rotation): s.rotation for s in self.streams if s.rotation is not None}.values())

    @property
    def normed(self) -> bool:
        """Whether the call absorbs the streams' norms."""
        return self.streams[0].norm is not None

    @property
    def norm_kind(self) -> str:
        """The op's norm argument: "none", "head" (over each head) or "heads" (over all heads)."""
        return _norm_kind_of(self.streams[0].view) if self.normed else "none"

    @property
    def norm_rounding(self) -> str:
        """The op's rounding argument: where the absorbed norms round ("none" without norms)."""
        return self.streams[0].norm.rounding if self.normed else "none"


def leading_cat_dim(node: Any) -> int | None:
    """The dim of a cat along a leading dim (not the last), or None where ``node`` is no such cat."""
    if not (isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target is aten.cat.default):
        return None
    rank = value_of(node).dim()
    dim = (node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)) % rank
    return dim if dim < rank - 1 else None


def _groups_cat_after_rotation(rotations: list[Rotation]) -> list[Group]:
    # A group per cat of rotated streams (and plain ones) that is the only reader of its rotations.
    by_output = {rotation.output: rotation for rotation in rotations}
    groups, grouped = [], set()
    cats = {user for rotation in rotations for user in rotation.output.users if leading_cat_dim(user) is not None}
    for cat in sorted(cats, key=lambda node: node.name):
        members = [by_output.get(source) for source in cat.args[0]]
        if any(m is not None and (data_users(m.output) != {cat} or m in grouped) for m in members):
            continue
        rotated = [m for m in members if m is not None]
        if len({(m.rotary_dim, m.interleaved) for m in rotated}) != 1:
            continue
        if any(value_of(source).dtype != value_of(cat).dtype for source in cat.args[0]):
            continue
        streams = [Stream(source, by_output.get(source)) for source in cat.args[0]]
        nodes = {cat}.union(*(m.nodes for m in rotated))
        groups.append(Group(cat, streams, leading_cat_dim(cat), nodes))
        grouped.update(rotated)
    return groups


def _rotation_group(rotation: Rotation) -> Group:
    # The group of one rotation: one stream, or a stream per input of a cat the rotation alone reads.
    cat_dim = leading_cat_dim(rotation.x)
    lengths = [value_of(source).shape[cat_dim] for source in rotation.x.args[0]] if cat_dim is not None else []
    # Streams cut from a joint sequence read table rows at static offsets.
    if not (lengths and all(isinstance(length, int) for length in lengths) and data_users(rotation.x) <= rotation.nodes):
        return Group(rotation.output, [Stream(rotation.x, rotation)], 0, set(rotation.nodes))
    streams, offset = [], 0
    for source, length in zip(rotation.x.args[0], lengths):
        streams.append(Stream(source, rotation, table_rows=(offset, length)))
        offset += length
    return Group(rotation.output, streams, cat_dim, set(rotation.nodes) | {rotation.x})


def group_rotations(rotations: list[Rotation]) -> list[Group]:
    """The groups the ``rotations`` form: joined by a cat after them, else one group each."""
    groups = _groups_cat_after_rotation(rotations)
    grouped = {rotation for group in groups for rotation in group.rotations}
    return groups + [_rotation_group(rotation) for rotation in rotations if rotation not in grouped]


# --- Norm absorption -----------------------------------------------------------------------------


def _norm_under_slice(value: torch.fx.Node, source: torch.fx.Node) -> tuple[Norm, tuple[Any, ...]] | None:
    # The norm ``value`` is a static slice of, along a leading dim, and the slice.
    rank = value_of(value).dim()
    dim = (value.args[1] if len(value.args) > 1 else 0) % rank
    start, end, step = (list(value.args[2:5]) + [None, None, 1][len(value.args[2:5]):])[:3]
    bounds_known = all(bound is None or isinstance(bound, int) for bound in (start, end))
    norm = match_norm(source) if step == 1 and bounds_known and dim < rank - 1 else None
    return None if norm is None else (norm, ("slice", dim, start, end))


def _norm_under_head_split(value: torch.fx.Node, source: torch.fx.Node) -> tuple[Norm, tuple[Any, ...]] | None:
    # The norm over all heads whose output ``value`` splits into heads, and the split's shape.
    shape, source_shape = tuple(value_of(value).shape), tuple(value_of(source).shape)
    if len(shape) >= 3 and same_sizes(source_shape, shape[:-2] + (shape[-2] * shape[-1],)):
        norm = match_norm(source)
        if norm is not None:
            return norm, ("split_heads", list(shape))
    return None


def _stream_norm(stream: Stream) -> tuple[Norm, tuple[Any, ...] | None] | None:
    # The norm a stream's input is (or is cut from), and the cut. A clone after the norm (F.rms_norm
    # of a transposed view leaves one) is looked through: the fused call replaces it too.
    value = stream.input
    while value.op == "call_function" and value.target is aten.clone.default and isinstance(value.args[0], torch.fx.Node):
        stream.skipped_clones.add(value)
        value = value.args[0]
    norm = match_norm(value)
    if norm is not None:
        return norm, None
    if value.op != "call_function":
        return None
    source = value.args[0] if value.args else None
    if not isinstance(source, torch.fx.Node):
        return None
    if value.target is aten.slice.Tensor:
        return _norm_under_slice(value, source)
    if value.target is aten.reshape.default:
        return _norm_under_head_split(value, source)
    return None


def _norm_behind_permute(stream: Stream) -> Norm | None:
    # A norm (per head, or over all heads before a head split) the stream reads through a permute,
    # as [B, L, H, D] -> [B, H, L, D] models do: the fused call does not absorb it.
    value = stream.input
    if value.op != "call_function" or value.target is not aten.permute.default:
        return None
    source = value.args[0]
    # F.rms_norm of a non-contiguous input leaves a clone before the permute.
    while isinstance(source, torch.fx.Node) and source.target is aten.clone.default:
        source = source.args[0]
    if not isinstance(source, torch.fx.Node):
        return None
    norm = match_norm(source)
    if norm is None and source.target is aten.reshape.default and isinstance(source.args[0], torch.fx.Node):
        split = _norm_under_head_split(source, source.args[0])
        norm = split[0] if split is not None else None
    return norm


def absorb_norms(group: Group) -> None:
    """Give every stream its norm, if all streams have one of the same kind and every use of each
    norm's output is inside the group (the fused call then replaces the norms too); otherwise say
    why in ``group.unabsorbed_norm_reason``."""
    found = [_stream_norm(stream) for stream in group.streams]
    if all(item is None for item in found):
        permuted = next((norm for norm in map(_norm_behind_permute, group.streams) if norm is not None), None)
        if permuted is not None:
            group.unabsorbed_norm_reason = (
                f"the rotation reads the norm's output {permuted.output.name} through a permute "
                "([B, L, H, D] to [B, H, L, D]), which the fused op does not absorb"
            )
        return
    if any(item is None for item in found):
        group.unabsorbed_norm_reason = "some streams are normalized and some are not"
        return
    if len({(_norm_kind_of(view), norm.rounding) for norm, view in found}) != 1:
        group.unabsorbed_norm_reason = "the streams' norms differ in kind or rounding"
        return
    tensor_eps = next((norm.eps for norm, _ in found if isinstance(norm.eps, torch.fx.Node)), None)
    if tensor_eps is not None:
        group.unabsorbed_norm_reason = f"the norm's eps is a tensor ({describe_value(tensor_eps)}), not a number"
        return
    inside = group.nodes.union(*({stream.input, stream.value} | stream.skipped_clones for stream in group.streams))
    for norm, _ in found:
        if not data_users(norm.output) <= inside:
            group.unabsorbed_norm_reason = f"the norm's output, {describe_value(norm.output)}, is also used outside the rotation"
            return
    for stream, (norm, view) in zip(group.streams, found):
        stream.norm, stream.view = norm, view


def describe(group: Group) -> str:
    """The report's name for a fused group."""
    rotation = group.rotations[0]
    parts = [f"rope[{rotation.spelling}{'' if rotation.rotary_dim == value_of(rotation.x).shape[-1] else ' partial'}]"]
    if group.normed:
        parts.insert(0, f"{group.streams[0].norm.form} over {'all heads' if group.norm_kind == 'heads' else 'each head'}")
    text = " -> ".join(parts)
    if len(group.streams) > 1:
        text += f" x{len(group.streams)} streams"
        if any(stream.rotation is None for stream in group.streams):
            text += " (some unrotated)"
    if group.unabsorbed_norm_reason:
        text += f" (norm not absorbed: {group.unabsorbed_norm_reason})"
    return text
