"""Linear + tanh-GELU: graph before/after per spelling, numerics of the rewritten graph, near misses, the CUDA rule."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import helpers
import pytest
import torch
import torch.nn.functional as F
from graph_capture import Capture, capture
from helpers import KERNEL_TOLERANCE, fused_patterns, near_miss_reasons, randn, relative_error

import fusion_passes
from fusion_passes import linear_gelu
from fusion_passes.kernels import linear_gelu as linear_gelu_kernels

FAMILY = "linear_gelu"
B, L, K, N = 2, 4, 16, 32
BF16 = torch.bfloat16


# --- The chain, as models write it ---------------------------------------------------------------


def functional_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.gelu(F.linear(x, w, b), approximate="tanh")``."""
    return F.gelu(F.linear(x, weight, bias), approximate="tanh")


def hand_written_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The tanh formula written out, on ``x @ w.t() + b`` (a matmul and a bias add, not F.linear)."""
    h = x @ weight.t() + bias
    return 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * torch.pow(h, 3))))


class LinearThenGELU(torch.nn.Module):
    """``nn.Linear`` then ``nn.GELU(approximate="tanh")`` (FLUX's single-block MLP: ``act_mlp(proj_mlp(x))``)."""

    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(K, N, bias=bias)
        self.act = torch.nn.GELU(approximate="tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[..., K]``."""
        return self.act(self.proj(x))


def diffusers_gelu() -> torch.nn.Module:
    """diffusers' ``GELU(dim_in, dim_out, approximate="tanh")``: its own Linear, then ``F.gelu``."""
    from diffusers.models.activations import GELU

    return GELU(K, N, approximate="tanh")


def assert_matches_fp64(result: Capture, fn: Callable[..., Any], args: Sequence[Any], dtype: torch.dtype) -> None:
    """The shared fp64 comparison, and the output in the Linear's dtype."""
    assert result.output.dtype == dtype
    helpers.assert_matches_fp64(result, fn, args, dtype)


def module_capture(module: torch.nn.Module, x: torch.Tensor) -> tuple[Capture, torch.Tensor]:
    """Capture ``module`` under no_grad (an inference graph); also its fp64 eager output."""
    with torch.no_grad():
        result = capture(module, x)
        expected = module.double()(x.double())
    return result, expected


class GraphDiffTest(helpers.GraphDiffTest):
    """Each spelling's post-grad graph before and after the pass, pinned, with fp64 numerics."""

    def fused(self, result: Capture) -> list[str]:
        """The linear_gelu fusions' patterns."""
        return fused_patterns(result, FAMILY)

    def test_functional_fp32_with_bias(self) -> None:
        """2-D fp32: the addmm and the decomposed tanh-GELU become one op; the weight's transpose is its mat2."""
        result = self.check(functional_gelu, [randn(8, K), randn(N, K), randn(N)], torch.float32, ["addmm -> gelu[tanh]"])
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[8, 16]", arg1_1: "f32[32, 16]", arg2_1: "f32[32]"):
        permute: "f32[16, 32]" = torch.ops.aten.permute.default(arg1_1, [1, 0])
        addmm: "f32[8, 32]" = torch.ops.aten.addmm.default(arg2_1, arg0_1, permute)
        mul_4: "f32[8, 32]" = torch.ops.aten.mul.Tensor(addmm, 0.5)
        mul: "f32[8, 32]" = torch.ops.aten.mul.Tensor(addmm, addmm)
        mul_1: "f32[8, 32]" = torch.ops.aten.mul.Tensor(mul, addmm)
        mul_2: "f32[8, 32]" = torch.ops.aten.mul.Tensor(mul_1, 0.044715)
        add: "f32[8, 32]" = torch.ops.aten.add.Tensor(addmm, mul_2)
        mul_3: "f32[8, 32]" = torch.ops.aten.mul.Tensor(add, 0.7978845608028654)
        tanh: "f32[8, 32]" = torch.ops.aten.tanh.default(mul_3)
        add_1: "f32[8, 32]" = torch.ops.aten.add.Tensor(tanh, 1)
        mul_5: "f32[8, 32]" = torch.ops.aten.mul.Tensor(mul_4, add_1)
        return (mul_5,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[8, 16]", arg1_1: "f32[32, 16]", arg2_1: "f32[32]"):
        permute: "f32[16, 32]" = torch.ops.aten.permute.default(arg1_1, [1, 0])
        linear_gelu_default: "f32[8, 32]" = torch.ops.fusion_passes.linear_gelu.default(arg0_1, permute, arg2_1)
        return (linear_gelu_default,)
""")

    def test_module_bf16_batched_without_bias(self) -> None:
        """3-D bf16 ``nn.Linear(bias=False)`` + ``nn.GELU("tanh")``: mm on the flattened tokens, the GELU on its fp32
        upcast, cast back; one op on the 2-D view, reshaped back (one rounding where the graph makes two)."""
        torch.manual_seed(0)
        module = LinearThenGELU(bias=False).to(BF16).eval()
        x = randn(B, L, K, dtype=BF16)
        result, expected = module_capture(module, x)
        self.assertEqual(fused_patterns(result, FAMILY), ["mm 3-D -> gelu[tanh]/fp32->cast"])
        self.assertLess(relative_error(result.output, expected), KERNEL_TOLERANCE[BF16])
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[32, 16]", arg1_1: "bf16[2, 4, 16]"):
        view: "bf16[8, 16]" = torch.ops.aten.reshape.default(arg1_1, [8, 16])
        permute: "bf16[16, 32]" = torch.ops.aten.permute.default(arg0_1, [1, 0])
        mm: "bf16[8, 32]" = torch.ops.aten.mm.default(view, permute)
        view_1: "bf16[2, 4, 32]" = torch.ops.aten.reshape.default(mm, [2, 4, 32])
        convert_element_type_2: "f32[2, 4, 32]" = torch.ops.prims.convert_element_type.default(view_1, torch.float32)
        mul_4: "f32[2, 4, 32]" = torch.ops.aten.mul.Tensor(convert_element_type_2, 0.5)
        mul: "f32[2, 4, 32]" = torch.ops.aten.mul.Tensor(convert_element_type_2, convert_element_type_2)
        mul_1: "f32[2, 4, 32]" = torch.ops.aten.mul.Tensor(mul, convert_element_type_2)
        mul_2: "f32[2, 4, 32]" = torch.ops.aten.mul.Tensor(mul_1, 0.044715)
        add: "f32[2, 4, 32]" = torch.ops.aten.add.Tensor(convert_element_type_2, mul_2)
        mul_3: "f32[2, 4, 32]" = torch.ops.aten.mul.Tensor(add, 0.7978845608028654)
        tanh: "f32[2, 4, 32]" = torch.ops.aten.tanh.default(mul_3)
        add_1: "f32[2, 4, 32]" = torch.ops.aten.add.Tensor(tanh, 1)
        mul_5: "f32[2, 4, 32]" = torch.ops.aten.mul.Tensor(mul_4, add_1)
        convert_element_type_3: "bf16[2, 4, 32]" = torch.ops.prims.convert_element_type.default(mul_5, torch.bfloat16)
        return (convert_element_type_3,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[32, 16]", arg1_1: "bf16[2, 4, 16]"):
        view: "bf16[8, 16]" = torch.ops.aten.reshape.default(arg1_1, [8, 16])
        permute: "bf16[16, 32]" = torch.ops.aten.permute.default(arg0_1, [1, 0])
        linear_gelu_default: "bf16[8, 32]" = torch.ops.fusion_passes.linear_gelu.default(view, permute, None)
        reshape_default: "bf16[2, 4, 32]" = torch.ops.aten.reshape.default(linear_gelu_default, [2, 4, 32])
        return (reshape_default,)
""")

    def test_diffusers_gelu_fp16(self) -> None:
        """diffusers' ``GELU(approximate="tanh")`` module in fp16, 3-D with bias: addmm, reshape, GELU: one op."""
        torch.manual_seed(0)
        module = diffusers_gelu().half().eval()
        x = randn(B, L, K, dtype=torch.float16)
        result, expected = module_capture(module, x)
        self.assertEqual(fused_patterns(result, FAMILY), ["addmm 3-D -> gelu[tanh]/fp32->cast"])
        self.assertLess(relative_error(result.output, expected), KERNEL_TOLERANCE[torch.float16])
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f16[32, 16]", arg1_1: "f16[32]", arg2_1: "f16[2, 4, 16]"):
        view: "f16[8, 16]" = torch.ops.aten.reshape.default(arg2_1, [8, 16])
        permute: "f16[16, 32]" = torch.ops.aten.permute.default(arg0_1, [1, 0])
        linear_gelu_default: "f16[8, 32]" = torch.ops.fusion_passes.linear_gelu.default(view, permute, arg1_1)
        reshape_default: "f16[2, 4, 32]" = torch.ops.aten.reshape.default(linear_gelu_default, [2, 4, 32])
        return (reshape_default,)
""")

    def test_hand_written_formula_matmul_plus_bias(self) -> None:
        """The formula on ``x @ w.t() + b`` of a 3-D x: mm, reshape, then the bias add; the op takes the bias."""
        result = self.check(hand_written_gelu, [randn(B, L, K), randn(N, K), randn(N)], torch.float32,
                            ["mm+bias 3-D -> gelu[tanh formula]"])
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[32, 16]", arg1_1: "f32[2, 4, 16]", arg2_1: "f32[32]"):
        view: "f32[8, 16]" = torch.ops.aten.reshape.default(arg1_1, [8, 16])
        permute: "f32[16, 32]" = torch.ops.aten.permute.default(arg0_1, [1, 0])
        mm: "f32[8, 32]" = torch.ops.aten.mm.default(view, permute)
        view_1: "f32[2, 4, 32]" = torch.ops.aten.reshape.default(mm, [2, 4, 32])
        add: "f32[2, 4, 32]" = torch.ops.aten.add.Tensor(view_1, arg2_1)
        mul: "f32[2, 4, 32]" = torch.ops.aten.mul.Tensor(add, 0.5)
        pow_1: "f32[2, 4, 32]" = torch.ops.aten.pow.Tensor_Scalar(add, 3)
        mul_1: "f32[2, 4, 32]" = torch.ops.aten.mul.Tensor(pow_1, 0.044715)
        add_1: "f32[2, 4, 32]" = torch.ops.aten.add.Tensor(add, mul_1)
        mul_2: "f32[2, 4, 32]" = torch.ops.aten.mul.Tensor(add_1, 0.7978845608028654)
        tanh: "f32[2, 4, 32]" = torch.ops.aten.tanh.default(mul_2)
        add_2: "f32[2, 4, 32]" = torch.ops.aten.add.Tensor(tanh, 1)
        mul_3: "f32[2, 4, 32]" = torch.ops.aten.mul.Tensor(mul, add_2)
        return (mul_3,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[32, 16]", arg1_1: "f32[2, 4, 16]", arg2_1: "f32[32]"):
        view: "f32[8, 16]" = torch.ops.aten.reshape.default(arg1_1, [8, 16])
        permute: "f32[16, 32]" = torch.ops.aten.permute.default(arg0_1, [1, 0])
        linear_gelu_default: "f32[8, 32]" = torch.ops.fusion_passes.linear_gelu.default(view, permute, arg2_1)
        reshape_default: "f32[2, 4, 32]" = torch.ops.aten.reshape.default(linear_gelu_default, [2, 4, 32])
        return (reshape_default,)
""")


SPELLINGS = {
    "functional": lambda x, w, b: functional_gelu(x, w, b),
    "hand_written": hand_written_gelu,
    "hand_written_fp32_upcast": lambda x, w, b: linear_gelu.gelu_tanh_formula(F.linear(x, w, b).float()).to(x.dtype),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_every_spelling_and_dtype_fuses(spelling: str, rank: int, dtype: torch.dtype) -> None:
    """Every spelling, 2-D or batched, in every dtype: one fusion, fp64 parity."""
    torch.manual_seed(0)
    fn = SPELLINGS[spelling]
    x = randn(B, L, K, dtype=dtype) if rank == 3 else randn(B * L, K, dtype=dtype)
    args = [x, randn(N, K, dtype=dtype), randn(N, dtype=dtype)]
    result = capture(fn, *args)
    assert len(fused_patterns(result, FAMILY)) == 1, result.report.summary()
    assert_matches_fp64(result, fn, args, dtype)


def test_dynamic_length_fuses() -> None:
    """A symbolic token count: one graph for several lengths, the output reshaped with the symbolic sizes."""
    weight, bias = randn(N, K), randn(N)
    compiled = torch.compile(functional_gelu, backend="fusion_passes", options={"fusion_passes": {"devices": ("cpu",)}})
    for length in (5, 9, 13):
        x = randn(B, length, K)
        torch._dynamo.mark_dynamic(x, 1)
        torch.testing.assert_close(compiled(x, weight, bias), functional_gelu(x, weight, bias), rtol=1e-5, atol=1e-5)
    report = fusion_passes.report()
    assert len(report.graphs) == 1 and report.counts() == {"linear_gelu": 1}, report.summary()


def test_diffusers_feed_forward_matches_torch_compile() -> None:
    """diffusers' ``FeedForward(activation_fn="gelu-approximate")`` (FLUX, Qwen-Image, Wan): its first Linear
    and GELU fuse (exactly one fusion), and the output matches torch.compile alone."""
    from diffusers.models.attention import FeedForward

    torch.manual_seed(0)
    module = FeedForward(K, activation_fn="gelu-approximate").eval()
    x = randn(B, L, K)
    with torch.no_grad():
        baseline = torch.compile(module)(x)
        torch._dynamo.reset()
        fused = torch.compile(module, backend="fusion_passes", options={"fusion_passes": {"devices": ("cpu",)}})(x)
    report = fusion_passes.report()
    assert report.counts() == {"linear_gelu": 1}, report.summary()
    assert relative_error(fused, baseline) < 1e-5


# --- Near misses: none of these may fire -----------------------------------------------------------


def erf_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``F.gelu``'s default, the exact (erf) GELU."""
    return F.gelu(F.linear(x, weight, bias))


def gelu_of_scaled_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The GELU reads ``2 * linear``, not the Linear's output."""
    return F.gelu(2 * F.linear(x, weight, bias), approximate="tanh")


def gelu_of_transposed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The GELU reads the Linear's output through a transpose."""
    return F.gelu(F.linear(x, weight, bias).transpose(1, 2), approximate="tanh")


def pre_gelu_returned(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pre-GELU activation is also an output."""
    h = F.linear(x, weight, bias)
    return F.gelu(h, approximate="tanh"), h


def tanh_returned(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An intermediate inside the GELU (its tanh) is also an output."""
    h = F.linear(x, weight, bias)
    t = torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * torch.pow(h, 3)))
    return 0.5 * h * (1 + t), t


def addmm_with_full_bias(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``addmm`` of a ``[M, N]`` matrix: not a per-column bias."""
    return F.gelu(torch.addmm(bias.expand(x.shape[0], -1).contiguous(), x, weight.t()), approximate="tanh")


def scaled_addmm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``addmm(..., beta=0.5)``."""
    return F.gelu(torch.addmm(bias, x, weight.t(), beta=0.5), approximate="tanh")


def gelu_kept_in_fp32(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A half Linear whose GELU runs on its fp32 upcast and stays fp32."""
    return F.gelu(F.linear(x, weight, bias).float(), approximate="tanh")


@pytest.mark.parametrize(
    "fn, dtype, reason",
    [
        (erf_gelu, torch.float32, "an exact (erf) GELU of the Linear's output"),
        (gelu_of_scaled_linear, torch.float32, "the GELU reads a mul ("),
        (gelu_of_transposed_linear, torch.float32, "the GELU reads a permute ("),
        (pre_gelu_returned, torch.float32, "is also returned by the compiled code"),
        (tanh_returned, torch.float32, "an intermediate of the chain"),
        (addmm_with_full_bias, torch.float32, "is not a [N] bias (N = 32)"),
        (scaled_addmm, torch.float32, "the Linear's addmm scales its terms ({'beta': 0.5})"),
        (gelu_kept_in_fp32, BF16, "the chain's result dtype: expected the Linear's torch.bfloat16"),
        (functional_gelu, torch.float64, "x: expected one of ['torch.bfloat16', 'torch.float16', 'torch.float32'], got torch.float64"),
    ],
    ids=["erf", "scaled", "transposed", "pre-gelu-returned", "tanh-returned", "full-bias", "beta", "fp32-result", "fp64"],
)
def test_near_miss_does_not_fuse(fn: Callable[..., Any], dtype: torch.dtype, reason: str) -> None:
    """Not a Linear + tanh-GELU the op computes: no fusion, one near miss saying why; outputs unchanged."""
    args = [randn(B, L, K, dtype=dtype) if fn is gelu_of_transposed_linear else randn(8, K, dtype=dtype),
            randn(N, K, dtype=dtype), randn(N, dtype=dtype)]
    result = capture(fn, *args)
    assert fused_patterns(result, FAMILY) == []
    reasons = near_miss_reasons(result, FAMILY)
    assert len(reasons) == 1 and reason in reasons[0], reasons
    torch.testing.assert_close(result.output, fn(*args), rtol=1e-5, atol=1e-5)


def test_training_graph_is_a_reported_near_miss() -> None:
    """With grad, the pre-GELU activation is saved for backward: no fusion, and a near miss says why."""
    torch.manual_seed(0)
    result = capture(LinearThenGELU(bias=True), randn(8, K))
    assert fused_patterns(result, FAMILY) == []
    (reason,) = near_miss_reasons(result, FAMILY)
    assert "is saved for backward (a training graph)" in reason and "torch.no_grad()" in reason, reason


def test_other_gelus_and_tanhs_are_not_candidates() -> None:
    """A GELU of a graph input and a tanh activation after a Linear: neither a fusion nor a near miss."""

    def fn(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.gelu(x * 2, approximate="tanh"), torch.tanh(F.linear(x, weight))

    result = capture(fn, randn(8, K), randn(N, K))
    assert fused_patterns(result, FAMILY) == [] and near_miss_reasons(result, FAMILY) == [], result.report.summary()


# --- The op and the CUDA rule ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_op_is_tanh_gelu_rounded_once(dtype: torch.dtype) -> None:
    """The op on CPU: tanh-GELU of the fp32 GEMM plus bias, rounded once; with and without bias."""
    x, mat2, bias = randn(8, K, dtype=dtype), randn(K, N, dtype=dtype), randn(N, dtype=dtype)
    for b in (bias, None):
        expected = F.gelu(x.float() @ mat2.float() + (0 if b is None else b.float()), approximate="tanh").to(dtype)
        torch.testing.assert_close(torch.ops.fusion_passes.linear_gelu(x, mat2, b), expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    "args, message",
    [
        ((randn(8, K), randn(K + 1, N), None), "mat2: expected 16 rows (x's K), got (17, 32)"),
        ((randn(8, K), randn(K, N), randn(N + 1)), "bias: expected [32] (N), got (33,)"),
        ((randn(8, K), randn(K, N).double(), None), "mat2: expected x's dtype torch.float32, got torch.float64"),
        ((randn(2, 8, K), randn(K, N), None), "x, mat2: expected 2-D [M, K] and [K, N], got (2, 8, 16) and (16, 32)"),
    ],
    ids=["inner", "bias", "dtype", "rank"],
)
def test_op_rejects_wrong_arguments(args: tuple[Any, ...], message: str) -> None:
    """A wrong call raises a ValueError naming the argument, the expected and the actual value."""
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        torch.ops.fusion_passes.linear_gelu(*args)


def test_cuda_rule_refuses_few_rows_and_max_autotune() -> None:
    """On CUDA: fewer rows than measured faster, or max-autotune (Inductor's templates fuse the epilogue), stay Inductor's."""
    assert linear_gelu.cuda_refusal(linear_gelu.MIN_CUDA_ROWS, 3072, 12288) is None
    assert "rows (tokens)" in linear_gelu.cuda_refusal(linear_gelu.MIN_CUDA_ROWS - 1, 3072, 12288)
    for option in ("max_autotune", "max_autotune_gemm"):
        with torch._inductor.config.patch({option: True}):
            assert "max-autotune is on" in linear_gelu.cuda_refusal(32760, 1536, 8960)


def test_reference_matches_the_op_semantics_on_every_device() -> None:
    """The op's meaning does not depend on the device: on CPU ``_addmm_activation`` computes the erf GELU, which is why
    the op is not that ATen op there (its CUDA path, cuBLASLt's epilogue, is the tanh one)."""
    x, mat2, bias = randn(64, K), randn(K, N), randn(N)
    linear = torch.addmm(bias.double(), x.double(), mat2.double())
    aten_cpu = torch.ops.aten._addmm_activation(bias, x, mat2, use_gelu=True)
    assert relative_error(aten_cpu, F.gelu(linear)) < 1e-6 < relative_error(aten_cpu, F.gelu(linear, approximate="tanh"))
    assert relative_error(linear_gelu_kernels.reference(x, mat2, bias), F.gelu(linear, approximate="tanh")) < 1e-6


def test_a_linear_output_reshaped_twice_is_read_through_both_reshapes() -> None:
    """A bf16 graph on CUDA reshapes the Linear's 2-D output twice before the GELU: the Linear is found
    behind both, and the chain's result takes the outer reshape's shape."""
    graph = torch.fx.Graph()
    bias, x, mat2 = (graph.placeholder(name) for name in ("bias", "x", "mat2"))
    addmm = graph.call_function(torch.ops.aten.addmm.default, (bias, x, mat2))
    inner = graph.call_function(torch.ops.aten.reshape.default, (addmm, [2, 77, 6144]))
    outer = graph.call_function(torch.ops.aten.reshape.default, (inner, [154, 6144]))
    linear = linear_gelu.linear_of(outer)
    assert isinstance(linear, linear_gelu.Linear), linear
    assert (linear.x, linear.mat2, linear.bias, linear.shape) == (x, mat2, bias, (154, 6144))
    assert linear.nodes == (outer, inner, addmm)
