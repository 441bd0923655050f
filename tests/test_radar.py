"""The radar: kernel classification and attribution (synthetic profiler rows, and real Inductor kernel
names from a CPU compile), its totals, and its command line's CPU path (the report alone)."""

from __future__ import annotations

import re
import types

import pytest
import torch
import torch.nn.functional as F
from torch._inductor.utils import run_and_get_code

import fusion_passes
from fusion_passes import radar
from fusion_passes.radar import KernelRow, RadarResult
from fusion_passes.report import FusionReport, GraphReport, NearMiss

CPU = {"devices": ["cpu"]}


@pytest.mark.parametrize(
    "name, kind",
    [
        ("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NTT", "GEMM"),
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_kernel__5x_cublas", "GEMM"),
        ("void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_16x16_128x2_tn_align8>(Params)", "GEMM"),
        ("triton_tem_fused_addmm_0", "GEMM"),
        ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4, false, false, cutlass::bfloat16_t>>", "attention"),
        ("fmha_cutlassF_bf16_aligned_64x128_rf_sm80(PyTorchMemEffAttention::AttentionKernel<...>::Params)", "attention"),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x128_4x1x1_kernel0_0", "attention"),
        # Inductor's own kernels are memory-bound, even one named after the SDPA its copy feeds.
        ("triton_poi_fused__scaled_dot_product_efficient_attention_clone_2", "other"),
        ("triton_red_fused_add_mul_native_layer_norm_3", "other"),
        ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>>", "other"),
        ("_norm_modulate_kernel_0", "other"),
    ],
)
def test_kernel_kinds(name, kind):
    assert radar.kernel_kind(name) == kind


def near_miss(fusion: str, ops: tuple[str, ...], source: str, reason: str, module: str | None = None) -> NearMiss:
    return NearMiss(fusion, None, "node", source, reason, module=module, ops=ops)


LAYER_NORM_MISS = near_miss("adaln", ("add", "mul", "native_layer_norm"), "model.py:7 (forward): y = norm(x) * (2 + s)",
                            "the norm is multiplied by `2 + s` at model.py:7, which is not 1 + scale", "blocks.0")
RMS_NORM_MISS = near_miss("adaln", ("add", "mean", "mul", "pow", "rsqrt"), "model.py:9 (forward): y = rms(x) * s",
                          "no supported modulation after the norm")
CONV_MISS = near_miss("causal_conv1d", ("convolution", "silu", "slice"), "model.py:12 (forward): y = conv(x)[..., :L]",
                      "the convolution's padding is 2, not K - 1 = 3")


def report_of(*near_misses: NearMiss) -> FusionReport:
    report = FusionReport()
    report.graphs.append(GraphReport("0/0", near_misses=list(near_misses)))
    return report


def test_kernels_are_attributed_to_our_ops_near_misses_or_nothing():
    rows = [
        KernelRow("_norm_modulate_kernel_0", 30.0, 3),
        KernelRow("_rope_kernel_1", 20.0, 3),
        KernelRow("triton_red_fused_add_mul_native_layer_norm_3", 50.0, 3),
        KernelRow("void at::native::conv_depthwise2d_forward_kernel<float>", 40.0, 3, launched_by="convolution"),
        KernelRow("triton_red_fused_add_var_mean_4", 25.0, 3),  # a LayerNorm's statistics: not the RMSNorm chain
        KernelRow("triton_poi_fused__to_copy_sin_5", 10.0, 3),
        KernelRow("nvjet_tst_128x256", 500.0, 6),
        KernelRow("pytorch_flash::flash_fwd_kernel", 200.0, 3),
    ]
    by_name = {a.row.name: a for a in radar.attribute(rows, report_of(RMS_NORM_MISS, LAYER_NORM_MISS, CONV_MISS))}
    assert [a.row.name for a in by_name.values()][:2] == ["nvjet_tst_128x256", "pytorch_flash::flash_fwd_kernel"]
    assert {name: a.category for name, a in by_name.items()} == {
        "_norm_modulate_kernel_0": "fused by us",
        "_rope_kernel_1": "fused by us",
        "triton_red_fused_add_mul_native_layer_norm_3": "near miss",
        "void at::native::conv_depthwise2d_forward_kernel<float>": "near miss",
        "triton_red_fused_add_var_mean_4": "unexplained",
        "triton_poi_fused__to_copy_sin_5": "unexplained",
        "nvjet_tst_128x256": "GEMM",
        "pytorch_flash::flash_fwd_kernel": "attention",
    }
    assert by_name["_norm_modulate_kernel_0"].explanation == "fused by us (adaln kernel)"
    assert by_name["triton_red_fused_add_mul_native_layer_norm_3"].explanation == (
        "near miss adaln in blocks.0 at model.py:7 (forward): y = norm(x) * (2 + s): "
        "the norm is multiplied by `2 + s` at model.py:7, which is not 1 + scale"
    )
    assert by_name["void at::native::conv_depthwise2d_forward_kernel<float>"].near_miss is CONV_MISS
    assert by_name["triton_poi_fused__to_copy_sin_5"].explanation == "unexplained (computes _to_copy, sin)"


def test_a_chain_of_arithmetic_alone_needs_two_shared_ops():
    arithmetic = near_miss("residual_adaln", ("add", "mul"), "model.py:3 (forward): r = x + g * h", "reason")
    assert radar.explaining_near_miss(frozenset({"add", "sin"}), [arithmetic]) is None
    assert radar.explaining_near_miss(frozenset({"add", "mul", "sin"}), [arithmetic]) is arithmetic


def test_inductor_kernel_names_split_into_aten_ops():
    assert radar.split_ops("_to_copy_add_mul_native_layer_norm", ()) == ("_to_copy", "add", "mul", "native_layer_norm")
    assert radar.split_ops("add_var_mean", ()) == ("add", "var_mean")
    assert radar.kernel_ops(KernelRow("triton_per_fused_add_mean_mul_pow_rsqrt_12", 1.0, 1)) == {
        "add", "mean", "mul", "pow", "rsqrt"
    }


def test_totals_account_for_all_kernel_time():
    rows = [KernelRow("nvjet_a", 600.0, 2), KernelRow("flash_fwd", 200.0, 2), KernelRow("_rope_kernel_0", 100.0, 2),
            KernelRow("triton_red_fused_add_mul_native_layer_norm_1", 60.0, 2), KernelRow("triton_poi_fused_sin_2", 40.0, 2)]
    result = RadarResult("report", radar.attribute(rows, report_of(LAYER_NORM_MISS)), steps=2, device="GPU", step_ms=0.55)
    assert result.totals_ms() == pytest.approx(
        {"GEMM": 0.3, "attention": 0.1, "fused by us": 0.05, "near miss": 0.03, "unexplained": 0.02}
    )
    summary = result.summary()
    assert "GPU kernel time per step on GPU: 0.500 ms of a 0.550 ms step" in summary
    assert re.search(r"GEMM +0\.300 ms +60\.0%", summary) and re.search(r"total +0\.500 ms +100\.0%", summary)
    assert "kernels outside GEMMs and attention, longest first (3):" in summary
    assert re.search(r"50\.0 +10\.0% +1  _rope_kernel_0: fused by us \(rope kernel\)", summary)


def test_profile_events_become_rows_with_the_op_that_launched_them():
    from torch.autograd import DeviceType

    def event(name, device_type=DeviceType.CPU, us=0.0, kernels=()):
        span = types.SimpleNamespace(elapsed_us=lambda: us)
        kernels = [types.SimpleNamespace(name=kernel) for kernel in kernels]
        return types.SimpleNamespace(name=name, device_type=device_type, time_range=span, kernels=kernels)

    events = [
        event("aten::convolution", kernels=["conv_depthwise"]),
        event("triton_poi_fused_sin_0", kernels=["triton_poi_fused_sin_0"]),
        event("conv_depthwise", DeviceType.CUDA, 4.0),
        event("conv_depthwise", DeviceType.CUDA, 6.0),
        event("triton_poi_fused_sin_0", DeviceType.CUDA, 3.0),
    ]
    assert sorted(radar.rows_from_profile(events), key=lambda row: row.name) == [
        KernelRow("conv_depthwise", 10.0, 2, launched_by="convolution"),
        KernelRow("triton_poi_fused_sin_0", 3.0, 1),
    ]


def two_chains(x, scale, shift, scale2, shift2):
    y = F.layer_norm(x, x.shape[-1:]) * (2 + scale) + shift  # a near miss: not 1 + scale
    return (F.layer_norm(y, y.shape[-1:]) * (1 + scale2) + shift2).sin()


def two_chains_inputs() -> tuple[torch.Tensor, ...]:
    return tuple(torch.randn(shape) for shape in [(2, 8, 16)] + [(2, 1, 16)] * 4)


def test_inductor_kernels_tie_back_to_the_reports_near_miss():
    # Inductor names its C++ kernels like its Triton ones: cpp_fused_<ops>_<n>.
    fusion_passes.reset_report()
    with torch.no_grad():
        _, code = run_and_get_code(torch.compile(two_chains, backend=fusion_passes.backend_with(CPU)), *two_chains_inputs())
    names = sorted(set(re.findall(r"\bcpp_fused_\w+", "\n".join(code))))
    (miss,) = fusion_passes.report().near_misses
    attributions = radar.attribute([KernelRow(name, 1.0, 1) for name in names], fusion_passes.report())
    assert {a.row.name: (a.category, a.near_miss) for a in attributions} == {
        "cpp_fused_add_mul_native_layer_norm_0": ("near miss", miss),
        "cpp_fused_sin_1": ("unexplained", None),
    }


def tiny_model() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """The command line's ``module:function``: a module and its positional inputs."""

    class TwoChains(torch.nn.Module):
        def forward(self, *inputs):
            return two_chains(*inputs)

    return TwoChains(), two_chains_inputs()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path: the report alone")
def test_the_command_line_on_cpu_prints_the_report_alone(capsys):
    assert radar.main(["test_radar:tiny_model", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert fusion_passes.report().summary() in out
    assert fusion_passes.report().counts() == {"adaln": 1}
    assert "no GPU kernel profile on cpu: the radar profiles on a CUDA GPU" in out


def test_the_command_line_checks_its_arguments():
    with pytest.raises(SystemExit):
        radar.main([])
    with pytest.raises(ValueError, match="--single-layers: the wan model takes no such option"):
        radar.zoo_model("wan", "tiny", torch.float32, "cpu", single_layers=2)
    with pytest.raises(ValueError, match="model: expected 'module:function' or --model NAME, got 'nope'"):
        radar.user_model("nope")
    with pytest.raises(ValueError, match="steps: expected at least 1, got 0"):
        radar.radar(two_chains, *two_chains_inputs(), steps=0)
