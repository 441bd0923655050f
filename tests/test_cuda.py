"""The fused op inside compiled CUDA graphs (Triton kernel path); skipped without a GPU."""

import pytest
import torch
import torch.nn.functional as F

import fusion_passes

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# Tiny test shapes sit outside the measured CUDA size rule; lift it to exercise the kernel.
ANY_SIZE = {"fusion_passes": {"size_rule": False}}


def chain(x, emb):
    shift, scale, _gate = emb.chunk(3, dim=1)
    return F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_backend_runs_the_triton_kernel_with_parity(dtype):
    x = torch.randn(2, 77, 3072, device="cuda", dtype=dtype)
    emb = torch.randn(2, 3 * 3072, device="cuda", dtype=dtype)
    fused = torch.compile(chain, backend="fusion_passes", options=ANY_SIZE)(x, emb)
    assert fusion_passes.report().counts() == {"adaln": 1}
    torch._dynamo.reset()
    plain = torch.compile(chain)(x, emb)
    ref = chain(x.double(), emb.double())
    error = lambda out: ((out.double() - ref).norm() / ref.norm()).item()  # noqa: E731
    assert error(fused) <= max(2 * error(plain), 1e-6)


@pytest.mark.parametrize(
    ("tokens", "hidden", "reason"),
    [(4, 3072, "12288 elements, below"), (4096, 128, "hidden size 128 is outside")],
)
def test_sizes_where_inductor_wins_stay_with_inductor(tokens, hidden, reason):
    x = torch.randn(1, tokens, hidden, device="cuda")
    torch.compile(chain, backend="fusion_passes")(x, torch.randn(1, 3 * hidden, device="cuda"))
    report = fusion_passes.report()
    assert report.counts() == {}
    assert reason in report.near_misses[0].reason


def test_flux_tiny_bf16_on_cuda():
    from test_models import FLUX_F1_PER_DOUBLE_BLOCK, FLUX_F1_PER_SINGLE_BLOCK, PARITY, relative_error, tiny_flux

    model, inputs = tiny_flux(torch.bfloat16)
    model, inputs = model.cuda(), {k: v.cuda() for k, v in inputs.items()}
    with torch.no_grad():
        plain = torch.compile(model)(**inputs, return_dict=False)[0]
        torch._dynamo.reset()
        fused = torch.compile(model, backend="fusion_passes", options=ANY_SIZE)(**inputs, return_dict=False)[0]
    expected = 2 * FLUX_F1_PER_DOUBLE_BLOCK + 2 * FLUX_F1_PER_SINGLE_BLOCK
    assert fusion_passes.report().counts() == {"adaln": expected}
    assert relative_error(fused, plain) < PARITY[torch.bfloat16]
