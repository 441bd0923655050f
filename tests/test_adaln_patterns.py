"""F1 patterns: graph before/after per form, numerics of the rewritten graph, and near misses."""

import pytest
import torch
import torch.nn.functional as F
from expecttest import TestCase
from graph_capture import capture

import fusion_passes
import fusion_passes.adaln as adaln_family
from fusion_passes.kernels.adaln import MAX_HIDDEN

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


def flux_style(x, emb):
    """No-affine LN, [B, C] chunks of one linear output indexed [:, None] (FLUX AdaLayerNormZero)."""
    shift, scale, _gate = emb.chunk(3, dim=1)
    return F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]


def affine_3d_modulation(x, weight, bias, scale, shift):
    """LN with weight and bias, [B, 1, C] modulation, default eps."""
    return F.layer_norm(x, x.shape[-1:], weight, bias) * (1 + scale) + shift


def weight_only_vector_modulation(x, weight, scale, shift):
    """LN with weight only (nn.LayerNorm(bias=False)), [C] modulation, eps 1e-6."""
    return F.layer_norm(x, x.shape[-1:], weight, None, 1e-6) * (1 + scale) + shift


def relative_error(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


class GraphDiffTest(TestCase):
    """Each form's post-grad graph before and after the pass, pinned."""

    def test_flux_style_fp32(self):
        x, emb = torch.randn(2, 8, 16), torch.randn(2, 48)
        result = capture(flux_style, x, emb)
        self.assertExpectedInline(
            result.before,
            """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 48]", arg1_1: "f32[2, 8, 16]"):
        split = torch.ops.aten.split.Tensor(arg0_1, 16, 1)
        getitem: "f32[2, 16]" = split[0]
        getitem_1: "f32[2, 16]" = split[1]
        var_mean = torch.ops.aten.var_mean.correction(arg1_1, [2], correction = 0, keepdim = True)
        getitem_3: "f32[2, 8, 1]" = var_mean[0]
        getitem_4: "f32[2, 8, 1]" = var_mean[1]
        sub: "f32[2, 8, 16]" = torch.ops.aten.sub.Tensor(arg1_1, getitem_4)
        add: "f32[2, 8, 1]" = torch.ops.aten.add.Tensor(getitem_3, 1e-06)
        rsqrt: "f32[2, 8, 1]" = torch.ops.aten.rsqrt.default(add)
        mul: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(sub, rsqrt)
        unsqueeze: "f32[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_1, 1)
        add_1: "f32[2, 1, 16]" = torch.ops.aten.add.Tensor(unsqueeze, 1)
        mul_1: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(mul, add_1)
        unsqueeze_1: "f32[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem, 1)
        add_2: "f32[2, 8, 16]" = torch.ops.aten.add.Tensor(mul_1, unsqueeze_1)
        return (add_2,)
""",
        )
        self.assertExpectedInline(
            result.after,
            """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 48]", arg1_1: "f32[2, 8, 16]"):
        split = torch.ops.aten.split.Tensor(arg0_1, 16, 1)
        getitem: "f32[2, 16]" = split[0]
        getitem_1: "f32[2, 16]" = split[1]
        unsqueeze: "f32[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_1, 1)
        unsqueeze_1: "f32[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem, 1)
        layer_norm_modulate_default: "f32[2, 8, 16]" = torch.ops.fusion_passes.layer_norm_modulate.default(arg1_1, None, None, unsqueeze, unsqueeze_1, 1e-06)
        return (layer_norm_modulate_default,)
""",
        )
        self.assertEqual(result.report.counts(), {"adaln": 1})
        self.assertLess(relative_error(result.output, flux_style(x.double(), emb.double())), TOLERANCE[torch.float32])

    def test_affine_3d_modulation_fp32(self):
        args = [torch.randn(2, 8, 16), torch.randn(16), torch.randn(16), torch.randn(2, 1, 16), torch.randn(2, 1, 16)]
        result = capture(affine_3d_modulation, *args)
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 8, 16]", arg1_1: "f32[16]", arg2_1: "f32[16]", arg3_1: "f32[2, 1, 16]", arg4_1: "f32[2, 1, 16]"):
        var_mean = torch.ops.aten.var_mean.correction(arg0_1, [2], correction = 0, keepdim = True)
        getitem: "f32[2, 8, 1]" = var_mean[0]
        getitem_1: "f32[2, 8, 1]" = var_mean[1]
        sub: "f32[2, 8, 16]" = torch.ops.aten.sub.Tensor(arg0_1, getitem_1)
        add: "f32[2, 8, 1]" = torch.ops.aten.add.Tensor(getitem, 1e-05)
        rsqrt: "f32[2, 8, 1]" = torch.ops.aten.rsqrt.default(add)
        mul: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(sub, rsqrt)
        mul_1: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(mul, arg1_1)
        add_1: "f32[2, 8, 16]" = torch.ops.aten.add.Tensor(mul_1, arg2_1)
        add_2: "f32[2, 1, 16]" = torch.ops.aten.add.Tensor(arg3_1, 1)
        mul_2: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(add_1, add_2)
        add_3: "f32[2, 8, 16]" = torch.ops.aten.add.Tensor(mul_2, arg4_1)
        return (add_3,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "f32[2, 8, 16]", arg1_1: "f32[16]", arg2_1: "f32[16]", arg3_1: "f32[2, 1, 16]", arg4_1: "f32[2, 1, 16]"):
        layer_norm_modulate_default: "f32[2, 8, 16]" = torch.ops.fusion_passes.layer_norm_modulate.default(arg0_1, arg1_1, arg2_1, arg3_1, arg4_1, 1e-05)
        return (layer_norm_modulate_default,)
""")
        self.assertEqual(result.report.counts(), {"adaln": 1})
        ref = affine_3d_modulation(*(a.double() for a in args))
        self.assertLess(relative_error(result.output, ref), TOLERANCE[torch.float32])

    def test_weight_only_vector_modulation_bf16(self):
        args = [torch.randn(2, 8, 16), torch.randn(16), torch.randn(16), torch.randn(16)]
        result = capture(weight_only_vector_modulation, *(a.bfloat16() for a in args))
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 8, 16]", arg1_1: "bf16[16]", arg2_1: "bf16[16]", arg3_1: "bf16[16]"):
        convert_element_type: "f32[2, 8, 16]" = torch.ops.prims.convert_element_type.default(arg0_1, torch.float32)
        var_mean = torch.ops.aten.var_mean.correction(convert_element_type, [2], correction = 0, keepdim = True)
        getitem: "f32[2, 8, 1]" = var_mean[0]
        getitem_1: "f32[2, 8, 1]" = var_mean[1]
        sub: "f32[2, 8, 16]" = torch.ops.aten.sub.Tensor(convert_element_type, getitem_1)
        add: "f32[2, 8, 1]" = torch.ops.aten.add.Tensor(getitem, 1e-06)
        rsqrt: "f32[2, 8, 1]" = torch.ops.aten.rsqrt.default(add)
        mul: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(sub, rsqrt)
        mul_1: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(mul, arg1_1)
        convert_element_type_1: "bf16[2, 8, 16]" = torch.ops.prims.convert_element_type.default(mul_1, torch.bfloat16)
        add_1: "bf16[16]" = torch.ops.aten.add.Tensor(arg2_1, 1)
        mul_2: "bf16[2, 8, 16]" = torch.ops.aten.mul.Tensor(convert_element_type_1, add_1)
        add_2: "bf16[2, 8, 16]" = torch.ops.aten.add.Tensor(mul_2, arg3_1)
        return (add_2,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 8, 16]", arg1_1: "bf16[16]", arg2_1: "bf16[16]", arg3_1: "bf16[16]"):
        layer_norm_modulate_default: "bf16[2, 8, 16]" = torch.ops.fusion_passes.layer_norm_modulate.default(arg0_1, arg1_1, None, arg2_1, arg3_1, 1e-06)
        return (layer_norm_modulate_default,)
""")
        self.assertEqual(result.report.counts(), {"adaln": 1})
        ref = weight_only_vector_modulation(*(a.bfloat16().double() for a in args))
        self.assertLess(relative_error(result.output, ref), TOLERANCE[torch.bfloat16])

    def test_flux_style_bf16(self):
        x, emb = torch.randn(2, 8, 16, dtype=torch.bfloat16), torch.randn(2, 48, dtype=torch.bfloat16)
        result = capture(flux_style, x, emb)
        self.assertExpectedInline(result.before, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 48]", arg1_1: "bf16[2, 8, 16]"):
        split = torch.ops.aten.split.Tensor(arg0_1, 16, 1)
        getitem: "bf16[2, 16]" = split[0]
        getitem_1: "bf16[2, 16]" = split[1]
        convert_element_type: "f32[2, 8, 16]" = torch.ops.prims.convert_element_type.default(arg1_1, torch.float32)
        var_mean = torch.ops.aten.var_mean.correction(convert_element_type, [2], correction = 0, keepdim = True)
        getitem_3: "f32[2, 8, 1]" = var_mean[0]
        getitem_4: "f32[2, 8, 1]" = var_mean[1]
        sub: "f32[2, 8, 16]" = torch.ops.aten.sub.Tensor(convert_element_type, getitem_4)
        add: "f32[2, 8, 1]" = torch.ops.aten.add.Tensor(getitem_3, 1e-06)
        rsqrt: "f32[2, 8, 1]" = torch.ops.aten.rsqrt.default(add)
        mul: "f32[2, 8, 16]" = torch.ops.aten.mul.Tensor(sub, rsqrt)
        convert_element_type_1: "bf16[2, 8, 16]" = torch.ops.prims.convert_element_type.default(mul, torch.bfloat16)
        unsqueeze: "bf16[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_1, 1)
        add_1: "bf16[2, 1, 16]" = torch.ops.aten.add.Tensor(unsqueeze, 1)
        mul_1: "bf16[2, 8, 16]" = torch.ops.aten.mul.Tensor(convert_element_type_1, add_1)
        unsqueeze_1: "bf16[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem, 1)
        add_2: "bf16[2, 8, 16]" = torch.ops.aten.add.Tensor(mul_1, unsqueeze_1)
        return (add_2,)
""")
        self.assertExpectedInline(result.after, """\
class <lambda>(torch.nn.Module):
    def forward(self, arg0_1: "bf16[2, 48]", arg1_1: "bf16[2, 8, 16]"):
        split = torch.ops.aten.split.Tensor(arg0_1, 16, 1)
        getitem: "bf16[2, 16]" = split[0]
        getitem_1: "bf16[2, 16]" = split[1]
        unsqueeze: "bf16[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem_1, 1)
        unsqueeze_1: "bf16[2, 1, 16]" = torch.ops.aten.unsqueeze.default(getitem, 1)
        layer_norm_modulate_default: "bf16[2, 8, 16]" = torch.ops.fusion_passes.layer_norm_modulate.default(arg1_1, None, None, unsqueeze, unsqueeze_1, 1e-06)
        return (layer_norm_modulate_default,)
""")
        self.assertEqual(result.report.counts(), {"adaln": 1})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("eps", [1e-5, 1e-6, 9.999999974752427e-07])
def test_every_precision_and_eps_fuses_with_the_graphs_eps(dtype, eps):
    def chain(x, scale, shift):
        return F.layer_norm(x, x.shape[-1:], eps=eps) * (1 + scale) + shift

    args = [torch.randn(3, 5, 24, dtype=dtype), torch.randn(3, 1, 24, dtype=dtype), torch.randn(3, 1, 24, dtype=dtype)]
    result = capture(chain, *args)
    assert result.report.counts() == {"adaln": 1}
    assert f", {eps!r})" in result.after  # the graph's own eps reaches the fused op
    ref = chain(*(a.double() for a in args))
    assert relative_error(result.output, ref) < TOLERANCE[dtype]


def test_fp32_modulation_with_bf16_x_fuses_and_promotes():
    x = torch.randn(2, 8, 16, dtype=torch.bfloat16)
    scale, shift = torch.randn(2, 1, 16), torch.randn(2, 1, 16)
    result = capture(weight_only_vector_modulation, x, torch.ones(16, dtype=torch.bfloat16), scale, shift)
    assert result.report.counts() == {"adaln": 1}
    assert result.output.dtype == torch.float32


# Chains that must NOT fuse, each with the reason the report must give.
def norm_over_two_dims(x, scale, shift):
    return F.layer_norm(x, x.shape[-2:]) * (1 + scale) + shift


def normalized_value_used_elsewhere(x, scale, shift):
    normalized = F.layer_norm(x, x.shape[-1:])
    return normalized * (1 + scale) + shift, normalized


def scale_without_one(x, scale, shift):
    return F.layer_norm(x, x.shape[-1:]) * scale + shift


def two_plus_scale(x, scale, shift):
    return F.layer_norm(x, x.shape[-1:]) * (2 + scale) + shift


def plain_chain(x, scale, shift):
    return F.layer_norm(x, x.shape[-1:]) * (1 + scale) + shift


NEAR_MISSES = {
    "norm over two dims": (norm_over_two_dims, [(2, 8, 16), (2, 1, 16), (2, 1, 16)], torch.float32, "not followed"),
    "normalized value used elsewhere": (
        normalized_value_used_elsewhere,
        [(2, 8, 16), (2, 1, 16), (2, 1, 16)],
        torch.float32,
        "also used outside",
    ),
    "scale without +1": (scale_without_one, [(2, 8, 16), (2, 1, 16), (2, 1, 16)], torch.float32, "not followed"),
    "2 + scale": (two_plus_scale, [(2, 8, 16), (2, 1, 16), (2, 1, 16)], torch.float32, "not followed"),
    "modulation broadcasts x up": (
        plain_chain,
        [(8, 16), (2, 8, 16), (2, 8, 16)],
        torch.float32,
        "does not broadcast to x shape",
    ),
    "hidden too wide": (
        flux_style,
        [(1, 2, MAX_HIDDEN + 2), (1, 3 * (MAX_HIDDEN + 2))],
        torch.float32,
        f"outside 1..{MAX_HIDDEN}",
    ),
    "x with 5 dims": (
        plain_chain,
        [(1, 2, 2, 2, 16), (16,), (16,)],
        torch.float32,
        "x has 5 dims",
    ),
    "float64": (flux_style, [(2, 8, 16), (2, 48)], torch.float64, "x dtype torch.float64"),
}


@pytest.mark.parametrize("name", NEAR_MISSES)
def test_near_miss_does_not_fuse_and_says_why(name):
    fn, shapes, dtype, reason = NEAR_MISSES[name]
    args = [torch.randn(shape, dtype=dtype) for shape in shapes]
    result = capture(fn, *args)
    assert result.report.counts() == {}
    assert "layer_norm_modulate" not in result.after
    reasons = [miss.reason for miss in result.report.near_misses]
    assert any(reason in r for r in reasons), reasons
    expected = fn(*args)
    for out, ref in zip(*(o if isinstance(o, tuple) else (o,) for o in (result.output, expected)), strict=True):
        torch.testing.assert_close(out, ref)


def test_device_not_enabled_does_not_fuse():
    result = capture(flux_style, torch.randn(2, 8, 16), torch.randn(2, 48), devices=("cuda",))
    assert result.report.counts() == {}
    assert "device 'cpu' is not in config.devices" in result.report.near_misses[0].reason


def test_dynamic_shapes_fuse_and_serve_every_shape():
    report = fusion_passes.report()
    compiled = torch.compile(flux_style, backend="fusion_passes", dynamic=True, options={"fusion_passes": {"devices": ["cpu"]}})
    for batch, tokens, hidden in [(2, 8, 16), (3, 5, 16), (2, 7, 24)]:
        x, emb = torch.randn(batch, tokens, hidden), torch.randn(batch, 3 * hidden)
        torch.testing.assert_close(compiled(x, emb), flux_style(x, emb), rtol=1e-5, atol=1e-5)
    assert len(report.graphs) == 1, "one symbolic graph serves every shape"
    assert report.counts() == {"adaln": 1}


def test_dynamic_shapes_that_broadcast_x_up_do_not_fuse():
    result = capture(plain_chain, torch.randn(8, 16), torch.randn(2, 8, 16), torch.randn(2, 8, 16), dynamic=True)
    assert result.report.counts() == {}
    assert "does not broadcast to x shape" in result.report.near_misses[0].reason


@pytest.mark.parametrize(
    ("shape", "producer", "reason"),
    [
        ((1, 4096, 1024), None, "hidden size 1024 is outside 1152..8192"),
        ((1, 2048, 16384), None, "hidden size 16384 is outside 1152..8192"),
        ((1, 64, 3072), None, "x has 196608 elements, below the measured CUDA break-even 1048576"),
        ((1, 4096, 3072), torch.ops.aten.add.Tensor, "below the measured CUDA break-even 16777216 after a pointwise"),
        ((1, 4096, 3072), None, None),
        ((1, 4096, 3072), torch.ops.aten.mm.default, None),
        ((2, 4096, 3072), torch.ops.aten.add.Tensor, None),
    ],
)
def test_cuda_size_rule(shape, producer, reason):
    # The rule measured on the GPU (docs/BENCHMARKS.md), checked here on fake CUDA tensors.
    with torch._subclasses.fake_tensor.FakeTensorMode():
        x = torch.empty(shape, device="cuda", dtype=torch.bfloat16)
        scale = torch.empty(shape[0], 1, shape[-1], device="cuda", dtype=torch.bfloat16)
    graph = torch.fx.Graph()
    node = graph.placeholder("x") if producer is None else graph.call_function(producer, ())
    node.meta["val"] = x
    chain = adaln_family.MatchedChain(nodes={"x": node, "scale": scale, "shift": scale}, output=x)
    assert adaln_family._check(chain) is None  # the kernel supports every one of these
    found = adaln_family._cuda_size_rule(chain)
    assert found == reason if reason is None else reason in found


@pytest.mark.parametrize(("shape", "fires"), [((1, 4096, 3072), True), ((1, 64, 3072), False), ((1, 4096, 1024), False)])
def test_cuda_size_rule_judges_symbolic_sizes_at_their_compile_time_values(shape, fires):
    mode = torch._subclasses.fake_tensor.FakeTensorMode(shape_env=torch.fx.experimental.symbolic_shapes.ShapeEnv())
    x = mode.from_tensor(torch.empty(shape, device="meta"), static_shapes=False)
    assert not isinstance(x.shape[-1], int)  # size-1 dims stay static, the rest are symbols
    node = torch.fx.Graph().placeholder("x")
    node.meta["val"] = x
    chain = adaln_family.MatchedChain(nodes={"x": node, "scale": x, "shift": x}, output=x)
    assert adaln_family._check(chain) is None
    assert (adaln_family._cuda_size_rule(chain) is None) == fires


@pytest.mark.parametrize("operand", ["x", "scale"])
def test_data_dependent_sizes_do_not_fuse(operand):
    shape_env = torch.fx.experimental.symbolic_shapes.ShapeEnv()
    with torch._subclasses.fake_tensor.FakeTensorMode(shape_env=shape_env):
        unbacked = shape_env.create_unbacked_symint()
        static = torch.empty(2, 8, 16)
        dynamic = torch.empty(unbacked, 8, 16)
    values = {"x": static, "scale": static, "shift": static, operand: dynamic}
    nodes = {}
    for name, value in values.items():
        nodes[name] = torch.fx.Graph().placeholder(name)
        nodes[name].meta["val"] = value
    chain = adaln_family.MatchedChain(nodes=nodes, output=values["x"])
    assert f"{operand} shape" in adaln_family._check(chain)
    assert "data-dependent" in adaln_family._check(chain)
