"""How a fused op on CUDA is launched from a compiled graph, checked on fake CUDA graphs on CPU.

The pass replaces each fused op by Inductor's functional Triton-kernel node, planned once from the
graph's fake tensors: launch config, constexprs, strides and grid are constants of the graph;
only tensors (and symbolic sizes) remain arguments. (Inductor's generated code for it, on a GPU,
and a cache hit are tested in test_cuda.py.)
"""

from __future__ import annotations

import inspect
import re
import unittest
from collections.abc import Callable

import torch
import torch.nn.functional as F
from expecttest import TestCase
from test_rope_rules import joint_normed_rope
from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
from torch._inductor.virtualized import V
from torch.utils import _pytree as pytree

from fusion_passes import FusionConfig, FusionPassManager, FusionReport
from fusion_passes.graph_utils import graph_text
from fusion_passes.patterns import trace_post_grad

BF16, FP32 = torch.bfloat16, torch.float32


def adaln(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale) + shift


def rewritten_for_cuda(
    fn: Callable[..., torch.Tensor], *operands: tuple[tuple[int, ...], torch.dtype], size_rule: bool = True
) -> tuple[str, list[dict]]:
    """``fn`` traced on fake CUDA tensors ``(shape, dtype)`` or ``(shape, strides, dtype)`` and
    rewritten: its graph text (side-table indices as N) and the constant arguments of each launch."""
    mode = torch._subclasses.fake_tensor.FakeTensorMode()
    with mode:
        args = [torch.empty_strided(shape, rest[0] if len(rest) == 2 else torch.empty(shape).stride(), dtype=rest[-1], device="cuda")
                for shape, *rest in operands]
        gm = trace_post_grad(fn, args)
    with V.set_fake_mode(mode):
        FusionPassManager(FusionConfig(devices=("cuda",), size_rule=size_rule), report=FusionReport())(gm.graph)
    gm.recompile()
    hop = torch.ops.higher_order.triton_kernel_wrapper_functional
    constants = [kernel_side_table.get_constant_args(node.kwargs["constant_args_idx"])
                 for node in gm.graph.find_nodes(op="call_function", target=hop)]
    text = re.sub(r"(kernel_idx|constant_args_idx) = \d+", r"\1 = N", graph_text(gm))
    return text, constants


class LaunchPlanTest(TestCase):
    # The pinned text is the CPU CI's trace (torch 2.13); a GPU machine runs test_cuda.py instead.
    @unittest.skipIf(torch.cuda.is_available(), "pins the fake-CUDA trace of the CPU machines")
    def test_adaln_is_one_launch_with_its_plan_as_graph_constants(self) -> None:
        # scale and shift as chunk() views of one [2, 9216] modulation: rows 9216 apart.
        chunk = ((2, 1, 3072), (9216, 9216, 1), BF16)
        text, (plan,) = rewritten_for_cuda(adaln, ((2, 4096, 3072), BF16), chunk, chunk)
        self.assertExpectedInline(text, """\
class adaln(torch.nn.Module):
    def forward(self, x_1: "bf16[2, 4096, 3072]", scale_1: "bf16[2, 1, 3072]", shift_1: "bf16[2, 1, 3072]") -> _torch_Tensor_:
        empty_memory_format: "bf16[2, 4096, 3072]" = torch.ops.aten.empty.memory_format([2, 4096, 3072], dtype = torch.bfloat16, device = device(type='cuda', index=0), pin_memory = False)
        triton_kernel_wrapper_functional = torch.ops.higher_order.triton_kernel_wrapper_functional(kernel_idx = N, constant_args_idx = N, grid = [(264, 2, 1)], tma_descriptor_metadata = {}, kwargs = {'x_ptr': x_1, 'scale_ptr': scale_1, 'scale_else_ptr': scale_1, 'shift_ptr': shift_1, 'shift_else_ptr': shift_1, 'out_ptr': empty_memory_format}, tensors_to_clone = ['out_ptr'])
        getitem_2: "bf16[2, 4096, 3072]" = triton_kernel_wrapper_functional['out_ptr']
        return getitem_2
""")  # noqa: B950
        # Strides (the chunk views' rows are 9216 apart), eps and the launch config are constants.
        self.assertEqual(
            {name: plan[name] for name in ("scale_s1", "scale_s2", "scale_sc", "dim2", "hidden", "EPS", "HOISTED",
                                            "BLOCK_HIDDEN")},
            {"scale_s1": 9216, "scale_s2": 0, "scale_sc": 1, "dim2": 4096, "hidden": 3072, "EPS": 1e-6, "HOISTED": True,
             "BLOCK_HIDDEN": 4096},
        )

    @unittest.skipIf(torch.cuda.is_available(), "pins the fake-CUDA trace of the CPU machines")
    def test_chunks_of_a_small_computed_modulation_are_read_in_place(self) -> None:
        # Wan's (table + temb).chunk(6): given the chunks, Inductor would store each in its own
        # buffer (a kernel launch each); as views of the stored sum they are passed in place.
        def modulated_by_computed_chunks(x, table, temb):
            shift, scale = (table + temb.float()).chunk(2, dim=1)
            return (F.layer_norm(x.float(), x.shape[-1:], eps=1e-6) * (1 + scale) + shift).type_as(x)

        text, _ = rewritten_for_cuda(modulated_by_computed_chunks, ((1, 4096, 3072), BF16), ((1, 2, 3072), FP32),
                                     ((1, 2, 3072), BF16))
        views = re.findall(r"(as_strided_default(?:_\d)?): .* = torch.ops.aten.as_strided.default\((\w+), (.*)\)", text)
        self.assertEqual(views, [("as_strided_default", "add", "(1, 1, 3072), (6144, 3072, 1), 3072"),
                                 ("as_strided_default_1", "add", "(1, 1, 3072), (6144, 3072, 1), 0")])
        self.assertIn("'scale_ptr': as_strided_default, ", text)
        self.assertIn("'shift_ptr': as_strided_default_1, ", text)

    def test_joint_rope_streams_write_one_output_in_turn(self) -> None:
        shapes = [((1, 512, 24, 128), BF16), ((1, 4096, 24, 128), BF16), ((128,), BF16), ((128,), BF16),
                  ((1, 4608, 1, 128), FP32), ((1, 4608, 1, 128), FP32)]
        text, plans = rewritten_for_cuda(joint_normed_rope, *shapes)
        launches = re.findall(r"triton_kernel_wrapper_functional(?:_\d+)? = .*kwargs = \{'x_ptr': (\w+), 'out_ptr': (\w+)", text)
        # The image stream writes into the buffer the text stream returned.
        self.assertEqual(launches, [("text_1", "empty_memory_format"), ("image_1", "getitem_2")])
        self.assertEqual([plan["out_start"] for plan in plans], [0, 512 * 24 * 128])
        self.assertNotIn("torch.ops.fusion_passes", text)

    def test_a_computed_x_is_passed_once(self) -> None:
        # FLUX's single block normalizes cat([text, image]). An absent operand (no residual, gate,
        # weight, second output) is no tensor argument: where one stood in for x, Inductor stored a
        # copy of the computed x for every argument it filled (eleven copies).
        def adaln_of_cat(text, image, scale, shift):
            return adaln(torch.cat([text, image], dim=1), scale, shift)

        # (On CUDA the size rule leaves a norm of a cat to Inductor; the launch is checked without it.)
        text, (plan,) = rewritten_for_cuda(adaln_of_cat, ((1, 512, 3072), BF16), ((1, 4096, 3072), BF16),
                                           ((1, 1, 3072), BF16), ((1, 1, 3072), BF16), size_rule=False)
        (kwargs,) = re.findall(r"kwargs = (\{.*?\})", text)
        self.assertEqual(kwargs, "{'x_ptr': cat, 'scale_ptr': scale_1, 'scale_else_ptr': scale_1, 'shift_ptr': shift_1, "
                                 "'shift_else_ptr': shift_1, 'out_ptr': empty_memory_format}")
        self.assertIsNone(plan["residual_ptr"])

    def test_launch_constants_are_constexprs_of_the_kernel_inductor_compiles(self) -> None:
        # Inductor's wrapper then passes only the tensors: each launch argument costs host time.
        from fusion_passes.kernels import adaln as adaln_kernels
        from fusion_passes.kernels.launch import with_constexprs

        names = frozenset({"x_s0", "hidden"})
        specialized = with_constexprs(adaln_kernels._norm_modulate_kernel, names)
        self.assertIs(with_constexprs(adaln_kernels._norm_modulate_kernel, names), specialized)
        self.assertEqual(specialized.__name__, "_norm_modulate_kernel")
        source = inspect.getsource(specialized.fn)
        self.assertIn("hidden: tl.constexpr, x_s0: tl.constexpr, x_s1, ", source)

    def test_every_route_asks_inductor_for_its_own_launcher(self) -> None:
        import fusion_passes
        from torch._inductor import config as inductor_config

        name = "static_launch_user_defined_triton_kernels"
        if not hasattr(inductor_config, name):
            self.skipTest(f"this torch has no {name}")
        self.assertIs(fusion_passes.inductor_options()[name], True)
        with fusion_passes.enabled():
            self.assertIs(getattr(inductor_config, name), True)

    def test_operands_are_pinned_in_the_node_argument_containers(self) -> None:
        # Inductor (torch 2.11's decomposition) maps the pinned values against the node's own
        # arguments: the containers must be the same (immutable dicts), not plain dicts.
        mode = torch._subclasses.fake_tensor.FakeTensorMode()
        with mode:
            args = [torch.empty(2, 4096, 3072, dtype=BF16, device="cuda"), torch.empty(2, 1, 3072, dtype=BF16, device="cuda"),
                    torch.empty(2, 1, 3072, dtype=BF16, device="cuda")]
            gm = trace_post_grad(adaln, args)
        with V.set_fake_mode(mode):
            FusionPassManager(FusionConfig(devices=("cuda",)), report=FusionReport())(gm.graph)
        (node,) = gm.graph.find_nodes(op="call_function", target=torch.ops.higher_order.triton_kernel_wrapper_functional)
        pinned_args, pinned_kwargs = node.meta["eager_input_vals"]
        self.assertEqual(pinned_args, ())
        self.assertEqual(pytree.tree_structure(pinned_kwargs), pytree.tree_structure(node.kwargs))
        pinned, planned = pinned_kwargs["kwargs"]["scale_ptr"], node.kwargs["kwargs"]["scale_ptr"].meta["val"]
        self.assertEqual((pinned.shape, pinned.stride()), (planned.shape, planned.stride()))

    def test_cpu_graphs_keep_the_custom_op(self) -> None:
        mode = torch._subclasses.fake_tensor.FakeTensorMode()
        with mode:
            gm = trace_post_grad(adaln, [torch.empty(2, 64, 3072), torch.empty(2, 1, 3072), torch.empty(2, 1, 3072)])
        with V.set_fake_mode(mode):
            FusionPassManager(FusionConfig(devices=("cpu",)), report=FusionReport())(gm.graph)
        self.assertIn("fusion_passes.norm_modulate.default", graph_text(gm))

    def test_a_failing_launch_plan_keeps_the_custom_op(self) -> None:
        from fusion_passes.kernels import adaln as adaln_kernels

        original = adaln_kernels.kernel_launch
        adaln_kernels.kernel_launch = lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("planted"))
        try:
            chunk = ((2, 1, 3072), (9216, 9216, 1), BF16)
            text, plans = rewritten_for_cuda(adaln, ((2, 4096, 3072), BF16), chunk, chunk)
        finally:
            adaln_kernels.kernel_launch = original
        self.assertEqual(plans, [])
        self.assertIn("torch.ops.fusion_passes.norm_modulate.default", text)
