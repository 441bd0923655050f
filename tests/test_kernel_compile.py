"""The conv1d Triton kernel compiled for an H100/H200 (sm_90) without a GPU.

Triton's CPU interpreter runs the kernel's Python, not its compiler: code the compiler refuses
(a constexpr reassigned in an unrolled loop, branches returning different dtypes) passes every
interpreted test and fails on the first GPU launch. This compiles the kernel to PTX and cubin
through Triton's own CUDA backend (its bundled ptxas), in a process without TRITON_INTERPRET.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

# (WIDTH, VARLEN, HAS_BIAS, HAS_INIT, HAS_INIT_FLAGS, SILU, ROUND_CONV, INT64)
CONV1D_VARIANTS = [
    (4, False, False, False, False, True, 2, False),   # the fused pattern, bf16
    (2, False, True, False, False, False, 0, True),    # no activation, bias, int64 offsets
    (3, True, False, True, True, True, 0, False),      # packed, states chosen per sequence
    (4, True, True, True, False, False, 1, True),      # packed, every state used
    (8, True, False, False, False, True, 0, False),    # the widest kernel, packed, no states
]
POINTER_TYPES = {"x_ptr": "*bf16", "out_ptr": "*bf16", "init_ptr": "*bf16", "final_ptr": "*bf16",
                 "cu_seqlens_ptr": "*i32", "has_init_ptr": "*u8"}


def compile_conv1d_variants() -> list[str]:
    """Compile every CONV1D_VARIANTS entry for sm_90; the failures, as text."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fusion_passes.kernels import conv1d

    kernel = conv1d._causal_conv1d_kernel
    signature = {
        name: POINTER_TYPES.get(name, "*fp32") if name.endswith("_ptr") else "i32"
        for name, param in zip(kernel.arg_names, kernel.params)
        if not param.is_constexpr
    }
    names = ("WIDTH", "VARLEN", "HAS_BIAS", "HAS_INIT", "HAS_INIT_FLAGS", "SILU", "ROUND_CONV", "INT64")
    failures = []
    for variant, (block_c, block_l) in itertools.product(CONV1D_VARIANTS, [(8, 256), (128, 16)]):
        constants = dict(zip(names, variant), BLOCK_C=block_c, BLOCK_L=block_l,
                         BLOCK_K=triton.next_power_of_2(variant[0] - 1))
        try:
            compiled = triton.compile(ASTSource(kernel, signature, constants), target=GPUTarget("cuda", 90, 32),
                                      options={"num_warps": 4})
            assert compiled.asm.get("cubin"), "no cubin"
        except Exception as error:  # noqa: BLE001 (every compiler error is a failure to report)
            failures.append(f"{constants}: {type(error).__name__}: {error.__cause__ or error}")
    return failures


def test_conv1d_kernel_compiles_for_sm90() -> None:
    """Every specialization the launcher can ask for compiles (in a fresh process: the interpreter is off there)."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


if __name__ == "__main__":
    problems = compile_conv1d_variants()
    print("\n".join(problems) or "all compiled")
    sys.exit(1 if problems else 0)
