"""The fused ops inside compiled CUDA graphs (Triton kernel path); skipped without a GPU."""

import re

import pytest
import torch
import torch.nn.functional as F
from test_adaln_patterns import (
    gated_residual,
    gated_residual_fp32_form,
    hand_written_rms_norm_shift_first,
    one_norm_two_modulations,
    select01_residual,
)
from test_conv1d_patterns import transformers_causal_conv1d
from test_linear_gelu_patterns import functional_gelu
from test_rope_rules import complex_rope, joint_normed_rope, normed_rope
from tiny_models import MODELS
from torch._inductor.utils import run_and_get_code
from helpers import relative_error

import fusion_passes

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# Tiny test shapes sit outside the measured CUDA size rule; lift it to exercise the kernel.
ANY_SIZE = {"fusion_passes": {"size_rule": False}}


def chain(x, emb):
    shift, scale, _gate = emb.chunk(3, dim=1)
    return F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]



def compare_with_inductor(fn, args, counts):
    """The backend's outputs are as close to fp64 as Inductor's own (rounding differences only)."""
    fused = fn_outputs(torch.compile(fn, backend="fusion_passes", options=ANY_SIZE)(*args))
    assert fusion_passes.report().counts() == counts, fusion_passes.report().summary()
    torch._dynamo.reset()
    plain = fn_outputs(torch.compile(fn)(*args))
    reference = fn_outputs(fn(*(a.double() if a.is_floating_point() else a for a in args)))
    for out, inductor, ref in zip(fused, plain, reference, strict=True):
        assert out.dtype == inductor.dtype
        assert relative_error(out, ref) <= max(2 * relative_error(inductor, ref), 1e-6)


def fn_outputs(value):
    return value if isinstance(value, tuple) else (value,)


def cuda_randn(*shape, dtype=torch.float32):
    return torch.randn(shape, device="cuda", dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_adaln_runs_the_triton_kernel_with_parity(dtype):
    compare_with_inductor(chain, [cuda_randn(2, 77, 3072, dtype=dtype), cuda_randn(2, 3 * 3072, dtype=dtype)], {"adaln": 1})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_residual_adaln_and_per_token_modulation_choice_run_the_triton_kernel_with_parity(dtype):
    x, residual = cuda_randn(2, 77, 1536, dtype=dtype), cuda_randn(2, 77, 1536, dtype=dtype)
    emb = cuda_randn(2, 3 * 1536, dtype=dtype)
    compare_with_inductor(gated_residual, [residual, x, emb], {"residual_adaln": 1})
    torch._dynamo.reset()
    fusion_passes.reset_report()
    index = torch.randint(0, 2, (2, 77), device="cuda")
    compare_with_inductor(select01_residual, [residual, x, index, emb, cuda_randn(2, 3 * 1536, dtype=dtype)], {"residual_adaln": 1})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_norm_two_modulations_run_the_triton_kernel_with_parity(dtype):
    args = [cuda_randn(2, 77, 3072, dtype=dtype), cuda_randn(2, 6 * 3072, dtype=dtype)]
    compare_with_inductor(one_norm_two_modulations, args, {"adaln": 1})


def test_fp32_form_and_hand_written_rms_norm_round_like_inductor():
    modulation = [cuda_randn(2, 1, 1536) for _ in range(3)]
    args = [cuda_randn(2, 77, 1536, dtype=torch.bfloat16), cuda_randn(2, 77, 1536, dtype=torch.bfloat16), *modulation]
    compare_with_inductor(gated_residual_fp32_form, args, {"residual_adaln": 1})
    torch._dynamo.reset()
    fusion_passes.reset_report()
    bf16 = [cuda_randn(2, 77, 1536, dtype=torch.bfloat16), cuda_randn(1536, dtype=torch.bfloat16)]
    bf16 += [cuda_randn(2, 1, 1536, dtype=torch.bfloat16), cuda_randn(2, 1, 1536, dtype=torch.bfloat16)]
    compare_with_inductor(hand_written_rms_norm_shift_first, bf16, {"adaln": 1})


@pytest.mark.parametrize(
    ("tokens", "hidden", "reason"),
    [(4, 3072, "12288 elements, below"), (4096, 128, "hidden size 128 is outside")],
)
def test_sizes_where_inductor_wins_stay_with_inductor(tokens, hidden, reason):
    x = cuda_randn(1, tokens, hidden)
    torch.compile(chain, backend="fusion_passes")(x, cuda_randn(1, 3 * hidden))
    report = fusion_passes.report()
    assert report.counts() == {}
    assert reason in report.near_misses[0].reason


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_gelu_calls_the_cublaslt_epilogue_with_parity(dtype):
    """On CUDA (where Inductor unfuses an addmm feeding pointwise ops into mm and a bias add) the chain fuses, and
    the compiled code calls aten._addmm_activation directly (no custom-op dispatch)."""
    args = [cuda_randn(2, 77, 1536, dtype=dtype), cuda_randn(6144, 1536, dtype=dtype), cuda_randn(6144, dtype=dtype)]
    _, code = run_and_get_code(torch.compile(functional_gelu, backend="fusion_passes", options=ANY_SIZE), *args)
    assert fusion_passes.report().counts() == {"linear_gelu": 1}, fusion_passes.report().summary()
    # (The op's name stays in Inductor's provenance comments; no call of it is left.)
    assert "_addmm_activation" in "".join(code) and "torch.ops.fusion_passes" not in "".join(code)
    torch._dynamo.reset()
    fusion_passes.reset_report()
    compare_with_inductor(functional_gelu, args, {"linear_gelu": 1})


@pytest.mark.parametrize(
    ("tokens", "options", "reason"),
    [
        (154, {}, "the Linear has 154 rows (tokens)"),
        # ATen GEMMs only: the rule reads the option, the test need not compile Triton templates.
        (4096, {"max_autotune_gemm": True, "max_autotune_gemm_backends": "ATEN"}, "max-autotune is on"),
    ],
)
def test_linear_gelu_left_to_inductor_where_not_measured_faster(tokens, options, reason):
    args = [cuda_randn(1, tokens, 1536, dtype=torch.bfloat16), cuda_randn(6144, 1536, dtype=torch.bfloat16), None]
    with torch._inductor.config.patch(options):
        torch.compile(functional_gelu, backend="fusion_passes")(*args)
    report = fusion_passes.report()
    assert report.counts() == {}
    assert reason in report.near_misses[0].reason, report.summary()


@pytest.mark.parametrize("name", list(MODELS))
def test_models_bf16_on_cuda(name):
    from test_models import PARITY, WHOLE, kinds

    model, inputs = MODELS[name](torch.bfloat16)
    model = model.cuda()
    inputs = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    with torch.no_grad():
        plain = torch.compile(model)(**inputs, return_dict=False)[0]
        torch._dynamo.reset()
        fused = torch.compile(model, backend="fusion_passes", options=ANY_SIZE)(**inputs, return_dict=False)[0]
    (graph,) = fusion_passes.report().graphs
    assert kinds(graph) == WHOLE[name], graph.summary()
    assert relative_error(fused, plain) < PARITY[torch.bfloat16]


def rope_args(fn, dtype, tokens=300, heads=6, head_dim=64):
    """Inputs of a test_rope_rules spelling: [1, tokens, heads, head_dim] activations, fp32 tables."""
    x = lambda length: cuda_randn(1, length, heads, head_dim, dtype=dtype)  # noqa: E731
    weight = lambda: 1 + 0.1 * cuda_randn(head_dim, dtype=dtype)  # noqa: E731
    angles = cuda_randn(tokens, 1, head_dim // 2)
    if fn is complex_rope:
        return [x(tokens), torch.polar(torch.ones_like(angles), angles)]
    cos, sin = angles.cos().repeat_interleave(2, -1), angles.sin().repeat_interleave(2, -1)
    if fn is joint_normed_rope:
        return [x(tokens // 4), x(tokens - tokens // 4), weight(), weight(), cos, sin]
    return [x(tokens), weight(), cos, sin]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fn", [normed_rope, complex_rope, joint_normed_rope])
def test_rope_runs_the_triton_kernel_with_parity(fn, dtype):
    compare_with_inductor(fn, rope_args(fn, dtype), {"rope": 1})


def attention(q, k, v, q_weight, k_weight, cos, sin):
    """q/k norm and rope on [B, L, H, D], then attention on the [B, H, L, D] views, as diffusers does."""
    q, k = normed_rope(q, q_weight, cos, sin), normed_rope(k, k_weight, cos, sin)
    return F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)))


def test_rope_output_feeds_attention_without_a_copy():
    q, weight, cos, sin = rope_args(normed_rope, torch.bfloat16, tokens=1024, heads=8)
    args = [q, cuda_randn(*q.shape, dtype=torch.bfloat16), cuda_randn(*q.shape, dtype=torch.bfloat16), weight, weight, cos, sin]
    _, code = run_and_get_code(torch.compile(attention, backend="fusion_passes"), *args)
    lines = [line.strip() for line in "".join(code).splitlines()]
    # Each rotation is a launch of the rope kernel by Inductor's wrapper; its output is argument 2.
    launches = [line for line in lines if re.match(r"_rope_kernel_\d+\.run\(", line)]
    assert len(launches) == 2, fusion_passes.report().summary()
    names = {launch.split("(")[1].split(",")[1].strip() for launch in launches}
    for line in lines:  # aliases ("buf52 = buf51") of the outputs
        if re.fullmatch(r"\w+ = \w+", line) and line.split(" = ")[1] in names:
            names.add(line.split(" = ")[0])
    uses = [
        line for line in lines
        if any(re.search(rf"\b{name}\b", line) for name in names)
        and not re.fullmatch(r"\w+ = \w+(;.*)?", line)
        and not line.startswith(("del ", "assert_", "#"))
        and not re.match(r"_rope_kernel_\d+\.run\(", line)
        and " = empty_strided_cuda(" not in line
    ]
    # Read by the attention kernel through views: no copy into another layout in between.
    assert uses and all("scaled_dot_product" in line for line in uses), uses


LAUNCHED_CHAINS = {
    "adaln": (chain, lambda: [cuda_randn(2, 77, 3072, dtype=torch.bfloat16), cuda_randn(2, 3 * 3072, dtype=torch.bfloat16)],
              "_norm_modulate_kernel"),
    "residual_adaln": (gated_residual, lambda: [cuda_randn(2, 77, 1536, dtype=torch.bfloat16)] * 2
                       + [cuda_randn(2, 3 * 1536, dtype=torch.bfloat16)], "_norm_modulate_kernel"),
    "rope": (joint_normed_rope, lambda: rope_args(joint_normed_rope, torch.bfloat16), "_rope_kernel"),
    "complex rope": (complex_rope, lambda: rope_args(complex_rope, torch.bfloat16), "_rope_kernel"),
    "causal_conv1d": (transformers_causal_conv1d, lambda: [cuda_randn(2, 96, 300, dtype=torch.bfloat16),
                      cuda_randn(96, 4, dtype=torch.bfloat16), cuda_randn(96, dtype=torch.bfloat16)], "_causal_conv1d_kernel"),
}


# Under dynamic=True a complex table's chain and a conv1d with a symbolic K are not fused at all.
FUSED_WHEN_DYNAMIC = ("adaln", "residual_adaln", "rope")


@pytest.mark.parametrize(
    ("name", "dynamic"),
    [(name, False) for name in LAUNCHED_CHAINS] + [(name, True) for name in FUSED_WHEN_DYNAMIC],
)
def test_compiled_graphs_launch_the_kernels_from_inductors_wrapper(name, dynamic):
    fn, make_args, kernel = LAUNCHED_CHAINS[name]
    args = make_args()
    compiled = torch.compile(fn, backend="fusion_passes", options=ANY_SIZE, dynamic=dynamic)
    out, code = run_and_get_code(compiled, *args)
    code = "".join(code)
    assert re.search(rf"{kernel}_\d+\.run\(", code), code
    assert "torch.ops.fusion_passes" not in code
    torch._dynamo.reset()
    for got, expected in zip(fn_outputs(out), fn_outputs(torch.compile(fn)(*args)), strict=True):
        assert relative_error(got, expected) < 1e-2


def test_dynamic_lengths_share_one_launch_plan():
    compiled = torch.compile(chain, backend="fusion_passes", options=ANY_SIZE, dynamic=True)
    for tokens in (77, 300, 1000):
        args = [cuda_randn(2, tokens, 3072, dtype=torch.bfloat16), cuda_randn(2, 3 * 3072, dtype=torch.bfloat16)]
        assert relative_error(compiled(*args), chain(*args)) < 1e-2
    assert len(fusion_passes.report().graphs) == 1


def test_fx_graph_cache_hit_launches_the_kernel(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    args = [cuda_randn(2, 77, 3072, dtype=torch.bfloat16), cuda_randn(2, 3 * 3072, dtype=torch.bfloat16)]
    with torch._inductor.config.patch(force_disable_caches=False, fx_graph_cache=True):
        codes = []
        for _ in range(2):
            torch._dynamo.reset()
            out, code = run_and_get_code(torch.compile(chain, backend="fusion_passes", options=ANY_SIZE), *args)
            codes.append("".join(code))
            assert relative_error(out, chain(*args)) < 1e-2
    assert fusion_passes.report().graphs[-1].cache_hit
    assert all(re.search(r"_norm_modulate_kernel_\d+\.run\(", code) for code in codes)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("spelling", ["channel_first", "channel_last"])
def test_conv1d_runs_the_triton_kernel_with_parity(spelling, dtype):
    from test_conv1d_patterns import channel_last_conv, transformers_causal_conv1d

    channels, length = 96, 300
    if spelling == "channel_first":
        fn, args = transformers_causal_conv1d, [cuda_randn(2, channels, length, dtype=dtype), cuda_randn(channels, 4, dtype=dtype),
                                                cuda_randn(channels, dtype=dtype)]
    else:
        fn, args = channel_last_conv, [cuda_randn(2, length, channels, dtype=dtype), cuda_randn(channels, 3, dtype=dtype)]
    compare_with_inductor(fn, args, {"causal_conv1d": 1})


def test_conv1d_varlen_is_captured_in_a_cuda_graph_without_host_sync():
    from fusion_passes.kernels import conv1d

    channels, width, lengths = 64, 4, [0, 1, 2, 37, 5]
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device="cuda", dtype=torch.int32)
    x = cuda_randn(int(offsets[-1]), channels, dtype=torch.bfloat16).t()
    weight, states = cuda_randn(channels, width), cuda_randn(len(lengths), channels, width - 1, dtype=torch.bfloat16)
    flags = torch.tensor([True, False, True, True, False], device="cuda")
    call = lambda: conv1d.causal_conv1d_varlen(x, weight, offsets, initial_states=states, has_initial_state=flags,  # noqa: E731
                                               max_seqlen=max(lengths))
    expected = conv1d.reference(conv1d.CausalConv1d(x, weight, None, "silu", torch.float32, x.dtype, offsets, states, flags, max(lengths)))
    call()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out, final = call()
        graph.replay()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(out, expected[0], rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(final, expected[1])


@pytest.mark.parametrize("layout", ["token_major", "channel_major", "offset_view"])
def test_eager_varlen_reuses_its_planned_launch_across_token_counts(layout):
    """Eager calls of one operand layout share one plan; each token count (1, not a multiple of 16, a
    multiple of 16) and pointer alignment gets its own compiled variant, and every call matches the reference."""
    from fusion_passes.kernels import conv1d

    channels, width, sequences = 48, 4, 3
    weight, bias = cuda_randn(channels, width), cuda_randn(channels)
    states = cuda_randn(sequences, channels, width - 1, dtype=torch.bfloat16)
    flags = torch.tensor([True, False, True], device="cuda")
    conv1d._PACKED_PLANS.clear()
    for tokens in (1, 3, 16, 17, 48, 1, 33, 16):
        lengths = [tokens // 3, tokens // 3, tokens - 2 * (tokens // 3)]
        offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device="cuda", dtype=torch.int32)
        if layout == "token_major":
            x = cuda_randn(tokens, channels, dtype=torch.bfloat16).t()
        elif layout == "channel_major":
            x = cuda_randn(channels, tokens, dtype=torch.bfloat16)
        else:  # one element in: not 16-byte aligned
            x = cuda_randn(tokens * channels + 1, dtype=torch.bfloat16)[1:].view(tokens, channels).t()
        out, final = conv1d.causal_conv1d_varlen(x, weight, offsets, bias=bias, initial_states=states, has_initial_state=flags)
        expected = conv1d.reference(conv1d.CausalConv1d(x, weight, bias, "silu", torch.float32, x.dtype, offsets, states, flags))
        torch.testing.assert_close(out, expected[0], rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(final, expected[1])
        assert out.stride() == expected[0].stride()
    (plan,) = conv1d._PACKED_PLANS.values()
    assert plan.error is None and plan.on_kernel and plan.launches
    assert len(plan.sized) == 6  # one per token count
    # Inductor's C++ launcher launches every compiled variant (torch 2.11 has it).
    assert all(variant.inductor_launcher for launch in plan.launches.values() for variant in launch.variants.values())


class NormModulateRopeBlock(torch.nn.Module):
    """A DiT block's memory-bound chains around its projection: AdaLN, then q RMSNorm + FLUX's rotation."""

    def __init__(self, hidden: int = 256, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.q = torch.nn.Linear(hidden, hidden)
        self.q_norm = torch.nn.RMSNorm(hidden // heads, eps=1e-6)

    def forward(self, x, emb, cos, sin):
        shift, scale = emb.chunk(2, dim=-1)
        h = F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
        q = self.q_norm(self.q(h).unflatten(-1, (self.heads, -1)))
        real, imaginary = q.reshape(*q.shape[:-1], -1, 2).unbind(-1)
        rotated = torch.stack([-imaginary, real], dim=-1).flatten(3)
        return (q.float() * cos + rotated.float() * sin).to(q.dtype)


def test_aoti_package_runs_the_fused_kernels_without_fusion_passes(tmp_path):
    """A block exported and packaged by AOTInductor with the passes installed launches our kernels from
    its compiled code: loaded in a process without fusion_passes importable, it runs and matches."""
    import subprocess
    import sys

    torch.manual_seed(0)
    block = NormModulateRopeBlock().cuda().to(torch.bfloat16)
    tokens, head_dim = 64, 64
    args = (cuda_randn(2, tokens, 256, dtype=torch.bfloat16), cuda_randn(2, 512, dtype=torch.bfloat16),
            cuda_randn(tokens, 1, head_dim), cuda_randn(tokens, 1, head_dim))
    with torch.no_grad():
        expected = block(*args)
        program = torch.export.export(block, args)
        package = torch._inductor.aoti_compile_and_package(
            program, package_path=str(tmp_path / "block.pt2"),
            inductor_configs=fusion_passes.inductor_options({"size_rule": False}))
    assert fusion_passes.report().counts() == {"adaln": 1, "rope": 1}, fusion_passes.report().summary()
    # Loaded in a fresh process only: loading crashed the process on torch 2.11 (README, AOTInductor).
    torch.save({"args": [a.cpu() for a in args], "expected": expected.cpu()}, tmp_path / "io.pt")
    script = f"""
import faulthandler, sys, torch
faulthandler.enable()
sys.modules["fusion_passes"] = None  # importing it now fails: the package must not need it
io = torch.load({str(tmp_path / "io.pt")!r})
args = [a.cuda() for a in io["args"]]
loaded = torch._inductor.aoti_load_package({package!r})
print("loaded", flush=True)
with torch.no_grad():
    out = loaded(*args).cpu()
error = ((out.double() - io["expected"].double()).norm() / io["expected"].double().norm()).item()
print("relative error", error)
assert error < 2e-2, error
"""
    result = subprocess.run([sys.executable, "-P", "-c", script], capture_output=True, text=True, cwd=tmp_path)
    if result.returncode < 0 and "loaded" not in result.stdout:
        pytest.xfail(f"loading the package killed the process (signal {-result.returncode}) on torch {torch.__version__}:"
                     f" a known, undiagnosed crash\n{result.stderr[-2000:]}")
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}{result.stderr}"


def test_qwen3_next_bf16_on_cuda():
    pytest.importorskip("transformers")
    from test_models import LLM_WHOLE, PARITY
    from tiny_models import qwen3_next

    model, inputs = qwen3_next(torch.bfloat16)
    model = model.cuda()
    inputs = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    with torch.no_grad():
        plain = torch.compile(model)(**inputs).last_hidden_state
        torch._dynamo.reset()
        fused = torch.compile(model, backend="fusion_passes", options=ANY_SIZE)(**inputs).last_hidden_state
    (graph,) = fusion_passes.report().graphs
    assert graph.counts() == LLM_WHOLE["qwen3_next"], graph.summary()
    assert relative_error(fused, plain) < PARITY[torch.bfloat16]
