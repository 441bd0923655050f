"""Seeded random programs over the fused families' spellings, for the property-based tests.

``generate_program(seed)`` draws a few chains (AdaLN, also one norm modulated twice or per token by
a choice between two sets; residual + AdaLN; RoPE on q or q and k, partial or joint text + image,
with or without its q/k norm; causal conv1d) in random spellings, operand orders, dtypes, broadcast
shapes, strides and eps forms, some of them decoys, and renders them as the source of one ``torch.nn.Module`` (``Program``) plus a
``make_inputs(seed)`` function. Each chain knows whether the passes claim it (the family expected to
fuse it, or to report it as a near miss) and the least precise dtype it computes in (its tolerance).
The source is self-contained: a failing program is its own reproducer. Every cast to fp32 is spelled
``F32``, so the fp64 reference runs the same source with ``F32 = torch.float64``.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

import torch

BF16, FP16, FP32, FP64 = torch.bfloat16, torch.float16, torch.float32, torch.float64
DTYPE_NAMES = {BF16: "torch.bfloat16", FP16: "torch.float16", FP32: "torch.float32", FP64: "torch.float64"}
# fp64 has no kernel: its chains are drawn to check that nothing breaks, not to fuse.
DTYPE_WEIGHTS = {FP32: 4, BF16: 3, FP16: 3, FP64: 1}
EPS_VALUES = (1e-6, 1e-5, 1e-8, 3e-4)
FAMILIES = ("adaln", "residual_adaln", "rope", "causal_conv1d")
PRECISION_ORDER = (BF16, FP16, FP32, FP64)  # least precise first
MODES = ("no_grad", "inference_mode", "grad")

SOURCE_HEADER = '''\
import torch
import torch.nn.functional as F

F32 = torch.float32  # the fp64 reference runs this program with F32 = torch.float64
'''

MAKE_INPUTS_HEADER = '''\
def make_inputs(seed):
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape, dtype=torch.float32):
        return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)

    def angles(*shape):
        return torch.rand(shape, generator=generator, dtype=torch.float64) * 6.0
'''


def least_precise(*dtypes: torch.dtype) -> torch.dtype:
    """The least precise of ``dtypes`` (bf16 < fp16 < fp32 < fp64)."""
    return min(dtypes, key=PRECISION_ORDER.index)


@dataclasses.dataclass
class Linkable:
    """An output a later chain may take as its x: a ``[B, L, C]`` activation."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    tolerance_dtype: torch.dtype
    chain: int


@dataclasses.dataclass
class Chain:
    """One chain of a program: its source lines, inputs and outputs, and what the passes should do with it."""

    label: str
    family: str
    index: int
    # Lines of make_inputs (after its helpers) and the names they define that forward() takes.
    input_lines: list[str] = dataclasses.field(default_factory=list)
    args: list[str] = dataclasses.field(default_factory=list)
    # Lines of Program.__init__ (submodules) and of forward().
    init_lines: list[str] = dataclasses.field(default_factory=list)
    body: list[str] = dataclasses.field(default_factory=list)
    outputs: list[str] = dataclasses.field(default_factory=list)
    # The family claimed to fuse it (else it must be reported as a near miss), or None if the
    # spelling is not claimed (fp64, decoys that look alike but compute something else).
    expected: str | None = None
    # How many fused calls it becomes where it fuses (two for q and k).
    expected_count: int = 1
    tolerance_dtype: torch.dtype = FP32
    # The norm spellings it uses (NORM_SPELLINGS).
    norms: set[str] = dataclasses.field(default_factory=set)
    # The ``index`` of earlier chains this one reads an output of.
    depends_on: tuple[int, ...] = ()
    linkable: Linkable | None = None


@dataclasses.dataclass
class Program:
    """A few chains rendered as one module; ``source()`` is a self-contained reproducer."""

    seed: int
    chains: list[Chain]
    dynamic: bool = False
    # How it runs: under torch.no_grad(), under torch.inference_mode(), or with gradients (the
    # backward graph goes through the passes too, and the chains' intermediates are saved for it).
    mode: str = "no_grad"
    is_subset: bool = False

    @property
    def name(self) -> str:
        """``program_<seed>``; a subset's name adds the chains it keeps."""
        kept = "_chains_" + "_".join(str(chain.index) for chain in self.chains) if self.is_subset else ""
        return f"program_{self.seed}{kept}"

    def source(self) -> str:
        """The program's Python source: ``Program`` (a module) and ``make_inputs(seed)``."""
        return "\n".join(self._lines()[0]) + "\n"

    def chain_lines(self) -> list[tuple[int, int]]:
        """Each chain's first and last line number (1-based) in ``source()``, its forward() lines."""
        return self._lines()[1]

    def subset(self, indices: Sequence[int]) -> Program:
        """The program of the chains numbered ``indices`` (``Chain.index``) and the chains they read outputs of."""
        by_index = {chain.index: chain for chain in self.chains}
        keep: set[int] = set()
        stack = list(indices)
        while stack:
            index = stack.pop()
            if index not in keep:
                keep.add(index)
                stack.extend(by_index[index].depends_on)
        return Program(self.seed, [by_index[i] for i in sorted(keep)], self.dynamic, self.mode, is_subset=True)

    def _lines(self) -> tuple[list[str], list[tuple[int, int]]]:
        lines = SOURCE_HEADER.splitlines() + ["", "", "class Program(torch.nn.Module):", "    def __init__(self):"]
        lines.append("        super().__init__()")
        lines += ["        " + line for chain in self.chains for line in chain.init_lines]
        args = [arg for chain in self.chains for arg in chain.args]
        lines += ["", f"    def forward(self, {', '.join(args)}):"]
        ranges = []
        for chain in self.chains:
            lines.append(f"        # {chain.label}")
            start = len(lines) + 1
            lines += ["        " + line for line in chain.body]
            ranges.append((start, len(lines)))
        outputs = [name for chain in self.chains for name in chain.outputs]
        lines += [f"        return ({', '.join(outputs)},)", "", ""]
        lines += MAKE_INPUTS_HEADER.splitlines()
        lines += ["    " + line for chain in self.chains for line in chain.input_lines]
        lines.append(f"    return [{', '.join(args)}]")
        return lines, ranges


class Builder:
    """Accumulates one chain's lines under a name prefix (``c3_``) so chains never collide."""

    def __init__(self, rng: random.Random, index: int, family: str) -> None:
        self.rng = rng
        self.index = index
        self.chain = Chain(label="", family=family, index=index)
        self.notes: list[str] = []
        self.unclaimed = False
        self.names: set[str] = set()

    def name(self, base: str) -> str:
        """A fresh variable name for ``base``, the chain's own (``c3_weight``, then ``c3_weight_2``)."""
        name, count = f"c{self.index}_{base}", 1
        while name in self.names:
            count += 1
            name = f"c{self.index}_{base}_{count}"
        self.names.add(name)
        return name

    def arg(self, base: str, expression: str) -> str:
        """A forward() argument built by ``expression`` in make_inputs."""
        name = self.name(base)
        self.chain.input_lines.append(f"{name} = {expression}")
        self.chain.args.append(name)
        return name

    def setup(self, base: str, expression: str) -> str:
        """A make_inputs local (a base tensor whose views become arguments)."""
        name = self.name(base)
        self.chain.input_lines.append(f"{name} = {expression}")
        return name

    def module(self, base: str, constructor: str, *init: str) -> str:
        """A submodule ``self.<name>``; ``init`` lines may refer to it as ``{m}``."""
        name = self.name(base)
        self.chain.init_lines.append(f"self.{name} = {constructor}")
        self.chain.init_lines += [line.format(m=f"self.{name}") for line in init]
        return f"self.{name}"

    def line(self, code: str) -> None:
        """A forward() line."""
        self.chain.body.append(code)

    def let(self, base: str, expression: str) -> str:
        """A forward() local ``name = expression``."""
        name = self.name(base)
        self.line(f"{name} = {expression}")
        return name

    def note(self, text: str) -> None:
        """Part of the chain's label."""
        self.notes.append(text)

    def not_claimed(self, why: str) -> None:
        """The spelling is outside what the passes claim: the chain is not expected to fuse."""
        self.unclaimed = True
        self.note(f"unclaimed: {why}")

    def finish(self, expected: str | None, tolerance_dtype: torch.dtype, expected_count: int = 1) -> Chain:
        """The chain, its label and expectation filled in."""
        self.chain.label = f"{self.chain.family}: " + "; ".join(self.notes)
        self.chain.expected = None if self.unclaimed else expected
        self.chain.expected_count = expected_count
        self.chain.tolerance_dtype = tolerance_dtype
        return self.chain


def pick_dtype(b: Builder) -> torch.dtype:
    """A chain's activation dtype."""
    dtype = b.rng.choices(list(DTYPE_WEIGHTS), weights=list(DTYPE_WEIGHTS.values()))[0]
    claim_dtype(b, dtype)
    return dtype


def claim_dtype(b: Builder, dtype: torch.dtype) -> None:
    """A chain computing in fp64 is not claimed (no kernel takes it), whatever it rounds to on the way."""
    if dtype == FP64:
        b.not_claimed("fp64")


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` etc., as source."""
    return DTYPE_NAMES[dtype]


def randn(shape: Sequence[int], dtype: torch.dtype) -> str:
    """Source of a fresh random tensor."""
    return f"randn({', '.join(map(str, shape))}, dtype={dtype_name(dtype)})"


def strided_tensor(b: Builder, base: str, shape: tuple[int, ...], dtype: torch.dtype) -> str:
    """An argument of ``shape``: contiguous, a transpose, a slice of a wider tensor, or expanded over the batch."""
    rng = b.rng
    layouts = ["contiguous"]
    if len(shape) >= 2:
        layouts += ["sliced"]
        if len(shape) >= 3:
            layouts += ["transposed", "expanded"]
    layout = rng.choices(layouts, weights=[3] + [1] * (len(layouts) - 1))[0]
    if layout == "contiguous":
        return b.arg(base, randn(shape, dtype))
    b.note(f"{base} {layout}")
    if layout == "sliced":
        wider = (*shape[:-1], shape[-1] + rng.choice([1, 8]))
        return b.arg(base, f"{randn(wider, dtype)}[..., :{shape[-1]}]")
    if layout == "transposed":
        swapped = (*shape[:-2], shape[-1], shape[-2])
        return b.arg(base, f"{randn(swapped, dtype)}.transpose(-1, -2)")
    one = (1, *shape[1:])
    return b.arg(base, f"{randn(one, dtype)}.expand({', '.join(map(str, shape))})")


# --- Norms ------------------------------------------------------------------------------------------


NORM_SPELLINGS = ("layer_norm", "layer_module", "rms_norm", "rms_module", "rms_diffusers", "rms_llama", "layer_hand")


def eps_argument(rng: random.Random) -> float | None:
    """An eps, or None for the norm's default."""
    return rng.choice([None, *EPS_VALUES])


def add_eps(rng: random.Random, variance: str, eps: float) -> str:
    """``rsqrt(variance + eps)`` in one of its spellings."""
    return rng.choice([
        f"torch.rsqrt({variance} + {eps!r})",
        f"torch.rsqrt({eps!r} + {variance})",
        f"({variance} + {eps!r}).rsqrt()",
    ])


def norm(
    b: Builder, x: str, hidden: int, norm_dtype: torch.dtype, spellings: Sequence[str] = NORM_SPELLINGS,
) -> tuple[str, torch.dtype]:
    """Normalize ``x`` (its last dim, ``hidden``; values in ``norm_dtype``): the normed name, and the least
    precise dtype it computes in (fp32 where a hand-written norm takes fp32 statistics of fp64 values)."""
    rng = b.rng
    # The unclaimed hand-written LayerNorm is drawn half as often as each claimed spelling.
    spelling = rng.choices(spellings, weights=[1 if s == "layer_hand" else 2 for s in spellings])[0]
    eps = eps_argument(rng)
    dtype = dtype_name(norm_dtype)
    b.note(f"{spelling} eps={eps}")
    b.chain.norms.add(spelling)

    def weight(base: str) -> str:
        return b.arg(base, f"1 + 0.5 * {randn((hidden,), norm_dtype)}")

    if spelling == "layer_norm":
        affine = rng.choice(["none", "weight", "weight and bias"])
        b.note(f"affine={affine}")
        eps_text = "" if eps is None else f", eps={eps!r}"
        shape = rng.choice([f"({hidden},)", f"{x}.shape[-1:]"])
        if affine == "none":
            return b.let("normed", f"F.layer_norm({x}, {shape}{eps_text})"), norm_dtype
        bias = b.arg("bias", f"0.5 * {randn((hidden,), norm_dtype)}") if affine == "weight and bias" else "None"
        return b.let("normed", f"F.layer_norm({x}, {shape}, {weight('weight')}, {bias}{eps_text})"), norm_dtype
    if spelling == "layer_module":
        affine, bias = rng.choice([(False, False), (True, False), (True, True)])
        b.note(f"affine={affine} bias={bias}")
        eps_text = "" if eps is None else f", eps={eps!r}"
        init = ("torch.nn.init.normal_({m}.weight, 1.0, 0.5)",) if affine else ()
        init += ("torch.nn.init.normal_({m}.bias, 0.0, 0.5)",) if bias else ()
        module = b.module(
            "norm", f"torch.nn.LayerNorm({hidden}{eps_text}, elementwise_affine={affine}, bias={bias}, dtype={dtype})", *init
        )
        return b.let("normed", f"{module}({x})"), norm_dtype
    if spelling == "rms_norm":
        has_weight = rng.random() < 0.7
        w = weight("weight") if has_weight else "None"
        eps_text = "" if eps is None else f", {eps!r}"
        return b.let("normed", f"F.rms_norm({x}, ({hidden},), {w}{eps_text})"), norm_dtype
    if spelling == "rms_module":
        affine = rng.random() < 0.7
        init = ("torch.nn.init.normal_({m}.weight, 1.0, 0.5)",) if affine else ()
        module = b.module("norm", f"torch.nn.RMSNorm({hidden}, eps={eps!r}, elementwise_affine={affine}, dtype={dtype})", *init)
        return b.let("normed", f"{module}({x})"), norm_dtype
    eps = 1e-6 if eps is None else eps
    statistics = least_precise(norm_dtype, FP32)
    if spelling == "rms_diffusers":
        # diffusers' RMSNorm: fp32 statistics; rounded to a half weight's dtype before it, else to x's.
        variance = b.let("variance", f"{x}.to(F32).pow(2).mean(-1, keepdim=True)")
        scaled = b.let("scaled", f"{x} * {add_eps(rng, variance, eps)}")
        if rng.random() < 0.3:
            b.note("no weight")
            return b.let("normed", f"{scaled}.to({x}.dtype)"), statistics
        w = weight("weight")
        if norm_dtype in (BF16, FP16):
            return b.let("normed", f"{scaled}.to({w}.dtype) * {w}"), statistics
        return b.let("normed", f"{scaled} * {w}"), statistics
    if spelling == "rms_llama":
        # transformers' LlamaRMSNorm: the whole statistic in fp32, rounded to x's dtype before the weight.
        upcast = b.let("upcast", f"{x}.to(F32)")
        variance = b.let("variance", f"{upcast}.pow(2).mean(-1, keepdim=True)")
        scaled = b.let("scaled", f"{upcast} * {add_eps(rng, variance, eps)}")
        w = weight("weight")
        return b.let("normed", f"{w} * {scaled}.to({x}.dtype)"), statistics
    # A hand-written LayerNorm: not a spelling the passes claim.
    b.not_claimed("hand-written LayerNorm")
    mean = b.let("mean", f"{x}.mean(-1, keepdim=True)")
    centred = b.let("centred", f"{x} - {mean}")
    return b.let("normed", f"{centred} * {add_eps(rng, f'{centred}.pow(2).mean(-1, keepdim=True)', eps)}"), norm_dtype


# --- AdaLN modulation -------------------------------------------------------------------------------


@dataclasses.dataclass
class Operand:
    """A modulation operand: ``base`` and the indexing that broadcasts it to x (``(1 + base)[:, None]``)."""

    base: str
    index: str = ""

    def full(self) -> str:
        """The operand as broadcast to x."""
        return self.base + self.index


def modulation_operands(b: Builder, roles: Sequence[str], shape: tuple[int, ...], dtype: torch.dtype) -> dict[str, Operand]:
    """Tensors for ``roles`` (shift, scale, gate) broadcastable to x ``shape``: chunks of one embedding or separate tensors."""
    rng = b.rng
    rank, hidden = len(shape), shape[-1]
    if rng.random() < 0.5:
        chunks = len(roles) + rng.randint(0, 3)
        slots = rng.sample(range(chunks), len(roles))
        forms = ["input views"]
        if rank == 3:
            forms += ["[B, k*C] chunk", "[B, 1, k*C] chunk", "[B, L, k, C] chunk", "select01"]
        elif rank == 2:
            forms += ["[N, k*C] chunk"]
        else:
            forms += ["[B, F, k*C] chunk"]
        form = rng.choice(forms)
        b.note(f"modulation {form} ({chunks} chunks)")

        def chunked(emb: str, dim: int, prefix: str = "chunk") -> list[str]:
            # ``a, b, ... = emb.chunk(chunks, dim)``: the chunks' names.
            names = [b.name(f"{prefix}{i}") for i in range(chunks)]
            b.line(f"{', '.join(names)}{',' if chunks == 1 else ''} = {emb}.chunk({chunks}, dim={dim})")
            return names

        if form == "input views":
            # Separate arguments that are strided views of one embedding, as a caller's chunk() gives them.
            view_shape = {2: (rng.choice([1, shape[0]]), hidden * chunks), 3: (shape[0], 1, hidden * chunks),
                          4: (shape[0], shape[1], 1, hidden * chunks)}[rank]
            base = b.setup("emb", randn(view_shape, dtype))
            return {role: Operand(b.arg(role, f"{base}[..., {slots[i] * hidden}:{(slots[i] + 1) * hidden}]"))
                    for i, role in enumerate(roles)}
        if form == "select01":
            # An image-edit model's per-token choice between two modulation sets (one boolean per token).
            index = b.arg("index", f"torch.randint(0, 2, ({shape[0]}, {shape[1]}), generator=generator)")
            chosen = b.let("chosen", rng.choice([f"{index}[..., None] == 0", f"{index}.bool()[..., None]"]))
            first = chunked(b.arg("emb0", randn((shape[0], hidden * chunks), dtype)), 1, "first")
            second = chunked(b.arg("emb1", randn((shape[0], hidden * chunks), dtype)), 1, "second")
            return {
                role: Operand(b.let(role, f"torch.where({chosen}, {first[slots[i]]}[:, None], {second[slots[i]]}[:, None])"))
                for i, role in enumerate(roles)
            }
        if form == "[B, k*C] chunk":
            names = chunked(b.arg("emb", randn((shape[0], hidden * chunks), dtype)), 1)
            return {role: Operand(names[slots[i]], "[:, None]") for i, role in enumerate(roles)}
        if form == "[B, 1, k*C] chunk":
            names = chunked(b.arg("emb", randn((shape[0], 1, hidden * chunks), dtype)), -1)
            return {role: Operand(names[slots[i]]) for i, role in enumerate(roles)}
        if form == "[B, L, k, C] chunk":
            table = b.arg("table", randn((1, 1, chunks, hidden), dtype))
            temb = b.arg("temb", randn((shape[0], shape[1], chunks, hidden), dtype))
            names = chunked(f"({table} + {temb})", 2)
            return {role: Operand(names[slots[i]], ".squeeze(2)") for i, role in enumerate(roles)}
        if form == "[N, k*C] chunk":
            names = chunked(b.arg("emb", randn((rng.choice([1, shape[0]]), hidden * chunks), dtype)), -1)
            return {role: Operand(names[slots[i]]) for i, role in enumerate(roles)}
        names = chunked(b.arg("emb", randn((shape[0], shape[1], hidden * chunks), dtype)), -1)
        return {role: Operand(names[slots[i]], "[:, :, None]") for i, role in enumerate(roles)}
    operands = {}
    for role in roles:
        shapes = [(hidden,), (1, hidden), shape]
        if rank == 3:
            shapes += [(shape[0], 1, hidden), (1, 1, hidden)]
        if rank == 4:
            shapes += [(shape[0], shape[1], 1, hidden)]
        role_shape = rng.choice(shapes)
        b.note(f"{role} {list(role_shape)}")
        operands[role] = Operand(strided_tensor(b, role, role_shape, dtype))
    return operands


def modulate(b: Builder, normed: str, operands: dict[str, Operand], number_shift: bool, shift: bool) -> str:
    """``normed * (1 + scale) [+ shift]`` in a random spelling (some of them decoys the passes must not take)."""
    rng = b.rng
    scale = operands["scale"]
    form = rng.choices(
        ["1 + scale", "scale + 1", "1.0 + scale", "(1 + scale) reshaped", "precomputed", "number", "1 - scale", "2 + scale", "scale"],
        weights=[12, 4, 2, 4 if scale.index else 0, 4, 2, 1, 1, 1],
    )[0]
    b.note(f"multiplier {form}")
    if form in ("1 - scale", "2 + scale"):
        b.not_claimed(f"multiplier {form}")
    if form == "scale":
        b.not_claimed("a plain scale multiplier")
    if form == "number" and (not shift or number_shift):
        b.not_claimed("a norm times a number with no tensor modulation is not AdaLN")
    multiplier = {
        "1 + scale": f"(1 + {scale.full()})",
        "scale + 1": f"({scale.full()} + 1)",
        "1.0 + scale": f"(1.0 + {scale.full()})",
        "(1 + scale) reshaped": f"(1 + {scale.base}){scale.index}",
        "number": "1.5",
        "1 - scale": f"(1 - {scale.full()})",
        "2 + scale": f"(2 + {scale.full()})",
        "scale": scale.full(),
    }.get(form)
    if form == "precomputed":
        multiplier = b.let("multiplier", f"(1 + {scale.base}){scale.index}")
    product = rng.choice([f"{normed} * {multiplier}", f"{multiplier} * {normed}"])
    if not shift:
        b.note("no shift")
        return product
    shift_value = "0.3" if number_shift else operands["shift"].full()
    if number_shift:
        b.note("number shift")
    return rng.choice([f"{product} + {shift_value}", f"{shift_value} + {product}"])


def adaln_tail(
    b: Builder, x: str, shape: tuple[int, ...], x_dtype: torch.dtype, tolerance: torch.dtype,
) -> tuple[str, torch.dtype, torch.dtype]:
    """The modulated norm of ``x``: ``N(x) * (1 + scale) + shift`` or the fp32-upcast form: y, its dtype, the tolerance dtype."""
    rng = b.rng
    upcast = x_dtype != FP64 and rng.random() < 0.3
    mod_dtype = x_dtype if x_dtype == FP64 or rng.random() < 0.6 else FP32
    if upcast:
        mod_dtype = FP32
        b.note("fp32-upcast form")
    b.note(f"x {dtype_name(x_dtype)} modulation {dtype_name(mod_dtype)}")
    shift = rng.random() < 0.8
    number_shift = shift and rng.random() < 0.15
    roles = ["scale"] + (["shift"] if shift and not number_shift else [])
    operands = modulation_operands(b, roles, shape, mod_dtype)
    norm_input = f"{x}.to(F32)" if upcast else x
    normed, norm_tolerance = norm(b, norm_input, shape[-1], FP32 if upcast else x_dtype)
    y = modulate(b, normed, operands, number_shift, shift)
    if upcast:
        y = f"({y}).{rng.choice(['type_as(' + x + ')', 'to(' + x + '.dtype)'])}"
    y_dtype = x_dtype if upcast else torch.promote_types(x_dtype, mod_dtype)
    return b.let("y", y), y_dtype, least_precise(tolerance, x_dtype, mod_dtype, norm_tolerance)


def adaln_shape(rng: random.Random) -> tuple[int, ...]:
    """x's shape: ``[B, L, C]`` mostly, else ``[N, C]`` or per-frame ``[B, F, L/F, C]``."""
    hidden = rng.choice([8, 16, 24, 32, 40])
    rank = rng.choices([3, 2, 4], weights=[6, 1, 1])[0]
    if rank == 3:
        return (rng.randint(1, 2), rng.randint(1, 6), hidden)
    if rank == 2:
        return (rng.randint(1, 6), hidden)
    return (rng.randint(1, 2), rng.randint(1, 3), rng.randint(1, 3), hidden)


def adaln_chain(b: Builder, link: Linkable | None) -> Chain:
    """``N(x) * (1 + scale) + shift``, or one norm modulated twice, on a fresh or linked x."""
    rng = b.rng
    if link is not None:
        shape, x_dtype, tolerance, x = link.shape, link.dtype, link.tolerance_dtype, link.name
        claim_dtype(b, x_dtype)
        b.chain.depends_on = (link.chain,)
        b.note(f"x is chain {link.chain}'s output")
    else:
        shape, x_dtype = adaln_shape(rng), pick_dtype(b)
        tolerance = x_dtype
        x = strided_tensor(b, "x", shape, x_dtype)
    b.note(f"x {list(shape)}")
    if rng.random() < 0.15:
        return dual_adaln(b, x, shape, x_dtype, tolerance)
    y, y_dtype, tolerance = adaln_tail(b, x, shape, x_dtype, tolerance)
    b.chain.outputs.append(y)
    chain = b.finish("adaln", tolerance)
    if len(shape) == 3:
        chain.linkable = Linkable(y, shape, y_dtype, tolerance, b.index)
    return chain


def dual_adaln(b: Builder, x: str, shape: tuple[int, ...], x_dtype: torch.dtype, tolerance: torch.dtype) -> Chain:
    """SD3.5's dual AdaLN: one norm, two modulations (one fused call for both)."""
    rng = b.rng
    b.note("one norm, two modulations")
    operands = modulation_operands(b, ["shift", "scale", "shift2", "scale2"], shape, x_dtype)
    normed, _ = norm(b, x, shape[-1], x_dtype, spellings=("layer_norm", "rms_norm", "layer_module", "rms_module"))
    first = b.let("y", f"{normed} * (1 + {operands['scale'].full()}) + {operands['shift'].full()}")
    second = rng.choice([f"{normed} * (1 + {operands['scale2'].full()}) + {operands['shift2'].full()}",
                         f"{operands['shift2'].full()} + (1 + {operands['scale2'].full()}) * {normed}"])
    b.chain.outputs += [first, b.let("y2", second)]
    return b.finish("adaln", tolerance)


def residual_chain(b: Builder, link: Linkable | None) -> Chain:
    """``r = residual + gate * x`` in one of its spellings, then the AdaLN chain on r; r returned too, mostly."""
    rng = b.rng
    if link is not None:
        shape, x_dtype, tolerance = link.shape, link.dtype, link.tolerance_dtype
        claim_dtype(b, x_dtype)
        b.chain.depends_on = (link.chain,)
        b.note(f"x is chain {link.chain}'s output")
        x = link.name
    else:
        shape, x_dtype = adaln_shape(rng), pick_dtype(b)
        tolerance = x_dtype
        x = strided_tensor(b, "x", shape, x_dtype)
    b.note(f"x {list(shape)}")
    residual = strided_tensor(b, "residual", shape, x_dtype)
    form = rng.choice([
        "residual + gate * x", "residual + x * gate", "gate * x + residual", "x * gate + residual",
        "residual + x", "x + residual", "residual + 0.5 * x", "fp32 form",
    ])
    if x_dtype == FP64 and form == "fp32 form":
        form = "residual + gate * x"
    b.note(f"residual {form}")
    if "gate" in form or form == "fp32 form":
        gate_dtype = FP32 if form == "fp32 form" else x_dtype
        gate = modulation_operands(b, ["gate"], shape, gate_dtype)["gate"].full()
        tolerance = least_precise(tolerance, gate_dtype)
        r = {
            "residual + gate * x": f"{residual} + {gate} * {x}",
            "residual + x * gate": f"{residual} + {x} * {gate}",
            "gate * x + residual": f"{gate} * {x} + {residual}",
            "x * gate + residual": f"{x} * {gate} + {residual}",
            "fp32 form": f"({residual}.to(F32) + {x} * {gate}).type_as({residual})",
        }[form]
    else:
        r = {"residual + x": f"{residual} + {x}", "x + residual": f"{x} + {residual}",
             "residual + 0.5 * x": f"{residual} + 0.5 * {x}"}[form]
    r = b.let("r", r)
    y, y_dtype, tolerance = adaln_tail(b, r, shape, x_dtype, tolerance)
    keep_r = rng.random() < 0.85
    b.chain.outputs += [r, y] if keep_r else [y]
    if not keep_r:
        b.note("r not returned (the single-output AdaLN applies)")
    chain = b.finish("residual_adaln" if keep_r else "adaln", tolerance)
    if len(shape) == 3:
        chain.linkable = Linkable(y, shape, y_dtype, tolerance, b.index)
    return chain


# --- RoPE ------------------------------------------------------------------------------------------


def rope_chain(b: Builder) -> Chain:
    """q (and k) [B, L, H, D] or [B, H, L, D], optionally RMS-normalized, then rotated in one of four spellings."""
    rng = b.rng
    dtype = pick_dtype(b)
    batch, tokens, head_dim = rng.randint(1, 2), rng.randint(1, 6), rng.choice([8, 16, 32])
    layout = rng.choice(["BLHD", "BHLD"])
    rotation = rng.choice(["interleaved", "rotate_half", "unbind_dim_2", "complex", "slice assignment"])
    norm_spelling = rng.choice(["none", "rms_norm", "rms_module", "rms_diffusers", "across heads"])
    table_form = rng.choice(["indexed", "prebuilt", "position ids"]) if rotation != "complex" else "complex"
    upcast_tables = dtype != FP64 and rng.random() < 0.6
    table_dtype = FP32 if upcast_tables else dtype
    # Partial rotary (GPT-NeoX, Phi): the first half of each head rotated, the rest passed through.
    partial = rotation not in ("complex", "slice assignment") and rng.random() < 0.2
    rotary = head_dim // 2 if partial else head_dim
    b.note(f"{layout} {dtype_name(dtype)} D={head_dim} R={rotary} {rotation} norm={norm_spelling} "
           f"tables {table_form} {dtype_name(table_dtype)}")
    tolerance = least_precise(dtype, table_dtype)
    streams = ["q", "k"] if rng.random() < 0.4 else ["q"]
    # Shared tables: cos and sin [L, D] (or [L + 3, D] gathered by position ids), complex freqs [L, D / 2].
    rows = tokens + 3 if table_form == "position ids" else tokens
    paired = rng.random() < 0.8  # tables repeated per pair (per half) as models build them; else any columns
    if paired:
        theta = b.setup("theta", f"angles({rows}, {rotary // 2})")
    else:
        b.note("tables with independent columns")
        theta = b.setup("theta", f"angles({rows}, {rotary})")
    if rotation == "complex":
        half = theta if paired else f"{theta}[..., ::2]"
        freqs = b.arg("freqs", f"torch.polar(torch.ones_like({half}), {half}).to(torch.complex64)")
        tables: tuple[str, ...] = (b.let("freqs_b", f"{freqs}.unsqueeze(1)" if layout == "BLHD" else f"{freqs}[None, None]"),)
    else:
        if not paired:
            repeated = theta
        elif rotation in ("interleaved", "slice assignment"):
            repeated = f"{theta}.repeat_interleave(2, -1)"
        else:
            repeated = f"torch.cat([{theta}, {theta}], -1)"
        cos_sin = []
        for fn in ("cos", "sin"):
            table = f"{repeated}.{fn}().to({dtype_name(table_dtype)})"
            if table_form == "prebuilt":
                shape = f"1, {tokens}, 1, {rotary}" if layout == "BLHD" else f"1, 1, {tokens}, {rotary}"
                cos_sin.append(b.arg(fn, f"{table}.reshape({shape})"))
            elif table_form == "indexed":
                table = b.arg(fn, table)
                cos_sin.append(b.let(f"{fn}_b", f"{table}[None, :, None, :]" if layout == "BLHD" else f"{table}[None, None]"))
            else:
                cos_sin.append(b.arg(fn, table))
        if table_form == "position ids":
            ids = b.arg("position_ids", f"torch.randint(0, {rows}, ({batch}, {tokens}), generator=generator)")
            axis = 2 if layout == "BLHD" else 1
            cos_sin = [b.let(f"{fn}_b", f"{table}[{ids}].unsqueeze({axis})") for fn, table in zip(("cos", "sin"), cos_sin)]
        tables = tuple(cos_sin)
    decoy = rng.random() < 0.1
    if decoy:
        b.not_claimed("a rotation with a sign flipped")
    # FLUX's joint attention: text and image tokens normalized apart, then one sequence.
    joint = tokens > 1 and norm_spelling != "across heads" and rng.random() < 0.2
    for stream in streams:
        heads = rng.randint(1, 3)
        if joint:
            text_tokens = rng.randint(1, tokens - 1)
            parts = [(f"{stream}_text", text_tokens), (f"{stream}_image", tokens - text_tokens)]
            b.note(f"{stream} joint text {text_tokens} + image {tokens - text_tokens} tokens")
        else:
            parts = [(stream, tokens)]
        # transformers' Qwen3: the per-head norm on [B, L, H, D], then the transpose to [B, H, L, D].
        norm_first = layout == "BHLD" and norm_spelling not in ("none", "across heads") and rng.random() < 0.3
        xs = []
        for part, part_tokens in parts:
            x_layout = "BLHD" if norm_first else layout
            x = _rope_stream_input(b, part, batch, part_tokens, heads, head_dim, dtype, x_layout, norm_spelling == "across heads")
            if norm_first:
                b.note(f"{part} normalized before the transpose")
                x, norm_tolerance = norm(b, x, head_dim, dtype, spellings=(norm_spelling,))
                tolerance = least_precise(tolerance, norm_tolerance)
                x = b.let(f"{part}_bhld", f"{x}.transpose(1, 2)")
            elif norm_spelling == "across heads":
                flat, _ = norm(b, x, heads * head_dim, dtype, spellings=("rms_norm",))
                x = b.let(f"{part}_heads", f"{flat}.unflatten(-1, ({heads}, {head_dim}))")
                if layout == "BHLD":
                    x = b.let(f"{part}_bhld", f"{x}.transpose(1, 2)")
            elif norm_spelling != "none":
                x, norm_tolerance = norm(b, x, head_dim, dtype, spellings=(norm_spelling,))
                tolerance = least_precise(tolerance, norm_tolerance)
            xs.append(x)
        x = xs[0] if not joint else b.let(f"{stream}_joint", f"torch.cat([{', '.join(xs)}], dim={1 if layout == 'BLHD' else 2})")
        if rotary == head_dim:
            b.chain.outputs.append(_rotate(b, stream, x, rotation, tables, dtype, decoy))
            continue
        rotated = _rotate(b, stream, b.let(f"{stream}_rot", f"{x}[..., :{rotary}]"), rotation, tables, dtype, decoy)
        b.chain.outputs.append(b.let(f"{stream}_partial", f"torch.cat([{rotated}, {x}[..., {rotary}:]], dim=-1)"))
    return b.finish("rope", tolerance, expected_count=len(streams))


def _rope_stream_input(
    b: Builder, stream: str, batch: int, tokens: int, heads: int, head_dim: int, dtype: torch.dtype, layout: str, flat: bool,
) -> str:
    # One stream's x: [B, L, H * D] where the norm spans all heads, else [B, L, H, D] / [B, H, L, D],
    # given directly, as a slice of a fused qkv projection, or transposed from the other layout.
    rng = b.rng
    source = rng.choice(["input", "qkv projection", "other layout"]) if not flat else rng.choice(["input", "qkv projection"])
    b.note(f"{stream} from {source}")
    width = heads * head_dim
    if source == "qkv projection":
        qkv = b.arg(f"{stream}kv", randn((batch, tokens, 3 * width), dtype))
        x = b.let(stream, rng.choice([f"{qkv}[..., :{width}]", f"{qkv}.chunk(3, dim=-1)[1]"]))
        if flat:
            return x
        x = b.let(f"{stream}_heads", rng.choice([f"{x}.view({batch}, {tokens}, {heads}, {head_dim})",
                                                   f"{x}.unflatten(-1, ({heads}, {head_dim}))"]))
        return x if layout == "BLHD" else b.let(f"{stream}_bhld", f"{x}.transpose(1, 2)")
    if flat:
        return b.arg(stream, randn((batch, tokens, width), dtype))
    blhd, bhld = (batch, tokens, heads, head_dim), (batch, heads, tokens, head_dim)
    if source == "input":
        return b.arg(stream, randn(blhd if layout == "BLHD" else bhld, dtype))
    return b.arg(stream, f"{randn(bhld if layout == 'BLHD' else blhd, dtype)}.transpose(1, 2)")


def _rotate(b: Builder, stream: str, x: str, rotation: str, tables: tuple[str, ...], dtype: torch.dtype, decoy: bool) -> str:
    # The rotation of x by the chain's tables, in ``rotation``'s spelling.
    rng = b.rng
    minus, plus = ("+", "-") if decoy else ("-", "+")
    cast = dtype != FP64 and rng.random() < 0.5
    def up(value: str) -> str:
        return f"{value}.to(F32)" if cast else value
    if rotation == "complex":
        (freqs,) = tables
        upcast = x if dtype == FP64 else f"{x}.to(F32)"
        complex_x = b.let(f"{stream}_complex", f"torch.view_as_complex({upcast}.reshape(*{x}.shape[:-1], -1, 2))")
        product = f"{complex_x} * {freqs}" if not decoy else f"{complex_x} * {freqs}.conj()"
        return b.let(f"{stream}_out", f"torch.view_as_real({product}).flatten(3).type_as({x})")
    cos, sin = tables
    if rotation == "slice assignment":
        x1, x2 = b.name(f"{stream}1"), b.name(f"{stream}2")
        b.line(f"{x1}, {x2} = {x}.unflatten(-1, (-1, 2)).unbind(-1)")
        cos_even, sin_odd = b.let(f"{stream}_cos", f"{cos}[..., 0::2]"), b.let(f"{stream}_sin", f"{sin}[..., 1::2]")
        out = b.let(f"{stream}_out", f"torch.empty_like({x})")
        b.line(f"{out}[..., 0::2] = {x1} * {cos_even} {minus} {x2} * {sin_odd}")
        b.line(f"{out}[..., 1::2] = {x1} * {sin_odd} {plus} {x2} * {cos_even}")
        return b.let(f"{stream}_y", f"{out}.type_as({x})")
    if rotation == "interleaved":
        real, imag = b.name(f"{stream}_real"), b.name(f"{stream}_imag")
        b.line(f"{real}, {imag} = {x}.reshape(*{x}.shape[:-1], -1, 2).unbind(-1)")
        rotated = b.let(f"{stream}_rotated", f"torch.stack([-{imag}, {real}], dim=-1).flatten(3)")
    elif rotation == "rotate_half":
        half = b.let(f"{stream}_half", f"{x}.shape[-1] // 2")
        rotated = b.let(f"{stream}_rotated", f"torch.cat((-{x}[..., {half}:], {x}[..., :{half}]), dim=-1)")
    else:
        real, imag = b.name(f"{stream}_real"), b.name(f"{stream}_imag")
        b.line(f"{real}, {imag} = {x}.reshape(*{x}.shape[:-1], 2, -1).unbind(-2)")
        rotated = b.let(f"{stream}_rotated", f"torch.cat([-{imag}, {real}], dim=-1)")
    out = rng.choice([f"{up(x)} * {cos} {plus} {up(rotated)} * {sin}", f"{cos} * {up(x)} {plus} {sin} * {up(rotated)}"])
    if decoy:
        out = f"{up(x)} * {cos} - {up(rotated)} * {sin}"
    return b.let(f"{stream}_out", f"({out}).to({x}.dtype)" if cast else out)


# --- Causal conv1d ---------------------------------------------------------------------------------


def conv1d_chain(b: Builder) -> Chain:
    """``F.conv1d(x, w[:, None, :], b, padding=K - 1, groups=C)[..., :L]`` (or an nn.Conv1d), optional SiLU, both layouts."""
    rng = b.rng
    dtype = pick_dtype(b)
    batch, channels, length, width = rng.randint(1, 2), rng.choice([4, 8, 12, 16]), rng.randint(1, 12), rng.randint(2, 8)
    layout = rng.choice(["channel-first", "token-major", "strided input"])
    weight_dtype = dtype if dtype == FP64 or rng.random() < 0.7 else FP32
    b.note(f"{layout} {dtype_name(dtype)} weight {dtype_name(weight_dtype)} B={batch} C={channels} L={length} K={width}")
    if layout == "channel-first":
        x = b.arg("x", randn((batch, channels, length), dtype))
    elif layout == "token-major":
        x_blc = b.arg("x_blc", randn((batch, length, channels), dtype))
        x = b.let("x", f"{x_blc}.transpose(1, 2)")
    else:
        x = b.arg("x", f"{randn((batch, length, channels), dtype)}.transpose(1, 2)")
    variant = rng.choices(["causal", "padding K", "dilation 2", "slice from 1", "K=9"], weights=[24, 1, 1, 1, 1])[0]
    if variant != "causal":
        b.not_claimed(f"not a causal conv1d ({variant})")
    width = 9 if variant == "K=9" else width
    padding = {"padding K": width, "dilation 2": 2 * (width - 1)}.get(variant, width - 1)
    dilation = ", dilation=2" if variant == "dilation 2" else ""
    has_bias = rng.random() < 0.5
    if rng.random() < 0.25 and variant == "causal":
        init = ("torch.nn.init.normal_({m}.weight, 0.0, 0.5)",)
        module = b.module(
            "conv", f"torch.nn.Conv1d({channels}, {channels}, {width}, groups={channels}, padding={width - 1}, "
            f"bias={has_bias}, dtype={dtype_name(weight_dtype)})", *init,
        )
        b.note(f"nn.Conv1d bias={has_bias}")
        conv_input = f"{x}.to({module}.weight.dtype)" if weight_dtype != dtype else x
        conv = b.let("conv", f"{module}({conv_input})")
    else:
        weight = b.arg("weight", f"0.5 * {randn((channels, width), weight_dtype)}")
        bias = b.arg("bias", randn((channels,), weight_dtype)) if has_bias else "None"
        spelled = rng.choice([f"{weight}[:, None, :]", f"{weight}.unsqueeze(1)"])
        b.note(f"F.conv1d bias={has_bias}")
        # transformers' spelling: x cast to the weight's dtype before, the result back to x's after.
        conv_input = f"{x}.to({weight}.dtype)" if weight_dtype != dtype else x
        conv = b.let("conv", rng.choice([
            f"F.conv1d({conv_input}, {spelled}, {bias}, padding={padding}, groups={channels}{dilation})",
            f"F.conv1d({conv_input}, weight={spelled}, bias={bias}, stride=1, padding={padding}{dilation}, groups={channels})",
        ]))
    start, stop = (1, f"{length} + 1") if variant == "slice from 1" else (0, length)
    cut = rng.choice([f"{conv}[..., {'' if start == 0 else start}:{stop}]", f"{conv}[:, :, {start}:{stop}]"]
                     if start else [f"{conv}[..., :{length}]", f"{conv}[:, :, :{length}]", f"{conv}[..., : {x}.shape[-1]]"])
    activation = rng.choice(["none", "F.silu", "sigmoid product"])
    b.note(f"activation {activation}")
    out = b.let("cut", cut)
    if activation == "F.silu":
        out = b.let("act", f"F.silu({out})")
    elif activation == "sigmoid product":
        out = b.let("act", f"{out} * torch.sigmoid({out})")
    if weight_dtype != dtype:
        out = b.let("out", f"{out}.to({x}.dtype)")
    if layout == "token-major":
        out = b.let("out_blc", f"{out}.transpose(1, 2)")
    b.chain.outputs.append(out)
    return b.finish("causal_conv1d", least_precise(dtype, weight_dtype))


# --- Programs --------------------------------------------------------------------------------------


def generate_program(seed: int) -> Program:
    """A program of one to three random chains, how it is compiled and run, drawn from ``seed`` alone."""
    rng = random.Random(seed)
    chains: list[Chain] = []
    for index in range(rng.randint(1, 3)):
        family = rng.choice(FAMILIES)
        b = Builder(rng, index, family)
        links = [chain.linkable for chain in chains if chain.linkable is not None]
        link = rng.choice(links) if links and family in ("adaln", "residual_adaln") and rng.random() < 0.4 else None
        if family == "adaln":
            chains.append(adaln_chain(b, link))
        elif family == "residual_adaln":
            chains.append(residual_chain(b, link))
        elif family == "rope":
            chains.append(rope_chain(b))
        else:
            chains.append(conv1d_chain(b))
    dynamic = rng.random() < 0.08
    return Program(seed, chains, dynamic, mode=rng.choices(MODES, weights=[7, 2, 2])[0])
