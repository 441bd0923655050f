"""Diffusers models (tiny random configs from SPEC.md) compiled with the backend on CPU."""

import pytest
import torch

import fusion_passes

diffusers = pytest.importorskip("diffusers")

CPU_OPTIONS = {"fusion_passes": {"devices": ("cpu",)}}
# Relative error of the backend's output against torch.compile alone.
PARITY = {torch.float32: 1e-4, torch.bfloat16: 3e-2}

# F1 chains per block: a double block modulates its image and text streams before attention
# and before the MLP (4); a single block once (1). FLUX's final AdaLayerNormContinuous writes
# "(1 + scale)[:, None, :]", a spelling for the AdaLN-family issue, and must stay unfused.
FLUX_F1_PER_DOUBLE_BLOCK = 4
FLUX_F1_PER_SINGLE_BLOCK = 1


def tiny_flux(dtype):
    torch.manual_seed(0)
    model = diffusers.FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=32,
        num_attention_heads=4,
        joint_attention_dim=64,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(8, 12, 12),
    )
    batch, height, width, text = 2, 4, 4, 8
    inputs = dict(
        hidden_states=torch.randn(batch, height * width, 16),
        encoder_hidden_states=torch.randn(batch, text, 64),
        pooled_projections=torch.randn(batch, 32),
        timestep=torch.rand(batch),
        guidance=torch.rand(batch) * 4,
        img_ids=torch.randn(height * width, 3),
        txt_ids=torch.zeros(text, 3),
    )
    inputs = {k: v.to(dtype) for k, v in inputs.items()}
    return model.to(dtype).eval(), inputs


def relative_error(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flux_whole_transformer(dtype):
    model, inputs = tiny_flux(dtype)
    with torch.no_grad():
        baseline = torch.compile(model)(**inputs, return_dict=False)[0]
        torch._dynamo.reset()
        fused = torch.compile(model, backend="fusion_passes", options=CPU_OPTIONS)(**inputs, return_dict=False)[0]
    report = fusion_passes.report()
    assert len(report.graphs) == 1
    expected = model.config.num_layers * FLUX_F1_PER_DOUBLE_BLOCK + model.config.num_single_layers * FLUX_F1_PER_SINGLE_BLOCK
    assert report.counts() == {"adaln": expected}
    (missed,) = report.near_misses
    assert "normalization.py" in missed.source and "(1 + scale)[:, None, :]" in missed.source
    assert relative_error(fused, baseline) < PARITY[dtype]


def test_flux_repeated_blocks():
    # diffusers' regional compilation: each block class compiles once, modulation computed inside.
    model, inputs = tiny_flux(torch.float32)
    with torch.no_grad():
        eager = model(**inputs, return_dict=False)[0]
        model.compile_repeated_blocks(backend="fusion_passes", options=CPU_OPTIONS)
        fused = model(**inputs, return_dict=False)[0]
    # Each compiled block graph (a block class may recompile once per torch version's guards).
    counts = {graph.counts().get("adaln", 0) for graph in fusion_passes.report().graphs}
    assert counts == {FLUX_F1_PER_SINGLE_BLOCK, FLUX_F1_PER_DOUBLE_BLOCK}
    assert relative_error(fused, eager) < PARITY[torch.float32]
