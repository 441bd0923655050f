"""Pass manager, backend, stock-backend hooks, report, cache key and FX-graph-cache behaviour."""

import importlib.metadata
import logging
import operator
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch._inductor.custom_graph_pass import CustomGraphPass

import fusion_passes
from fusion_passes import FusionConfig, FusionPassManager
from fusion_passes.graph_utils import canonicalize_reduction_dims, merge_duplicates

CPU_OPTIONS = {"fusion_passes": {"devices": ("cpu",)}}


def chain(x, emb):
    shift, scale = emb.chunk(2, dim=1)
    return F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]


def inputs():
    return torch.randn(2, 8, 16), torch.randn(2, 32)


class CountingPass(CustomGraphPass):
    """A user's own post-grad pass."""

    def __init__(self, uuid="counting-v1"):
        self.calls = 0
        self._uuid = uuid

    def __call__(self, graph):
        self.calls += 1

    def uuid(self):
        return self._uuid


def test_backend_is_registered_by_entry_point():
    assert "fusion_passes" in torch._dynamo.list_backends()


def test_backend_fuses_and_reports_source_lines():
    out = torch.compile(chain, backend="fusion_passes", options=CPU_OPTIONS)(*inputs())
    assert out.shape == (2, 8, 16)
    report = fusion_passes.report()
    assert report.counts() == {"adaln": 1}
    (record,) = report.fused
    assert "test_pass_manager.py" in record.source and "F.layer_norm" in record.source
    assert "fused adaln" in report.summary()


def test_backend_default_devices_skip_cpu_and_warn(caplog):
    with caplog.at_level(logging.WARNING, logger="fusion_passes"):
        torch.compile(chain, backend="fusion_passes")(*inputs())
    assert fusion_passes.report().counts() == {}
    assert "matched nothing" in caplog.text


def test_report_is_logged(caplog):
    with caplog.at_level(logging.INFO, logger="fusion_passes"):
        torch.compile(chain, backend="fusion_passes", options=CPU_OPTIONS)(*inputs())
    assert "1 fused, 0 near misses" in caplog.text


def test_torch_logs_turns_on_the_fusion_passes_logger(tmp_path):
    # torch's TORCH_LOGS takes any importable module's name: no registration needed.
    code = (
        "import logging, torch, fusion_passes\n"
        "fusion_passes.report().add(fusion_passes.GraphReport('0/0'))\n"
        "logging.getLogger('fusion_passes.radar').debug('a debug line')\n"
    )
    # "+": DEBUG and up (the summary is logged at INFO); one run, a fresh interpreter imports torch slowly.
    env = {**os.environ, "TORCH_LOGS": "+fusion_passes"}
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert "graph 0/0: 0 fused, 0 near misses" in result.stderr and "a debug line" in result.stderr, result.stderr


def test_mode_and_inductor_options_pass_through():
    torch.compile(
        chain,
        backend="fusion_passes",
        options={**CPU_OPTIONS, "max_autotune_pointwise": False, "epilogue_fusion": True},
    )(*inputs())
    assert fusion_passes.report().counts() == {"adaln": 1}
    torch._dynamo.reset()
    fusion_passes.reset_report()
    torch.compile(chain, backend="fusion_passes", mode="max-autotune-no-cudagraphs")(*inputs())
    assert len(fusion_passes.report().graphs) == 1  # compiled with our pass (cpu not enabled)


class ConfigProbe(CustomGraphPass):
    """A user's post-grad pass that notes Inductor's max_autotune setting when the passes run."""

    def __init__(self):
        self.max_autotune = []

    def __call__(self, graph):
        self.max_autotune.append(torch._inductor.config.max_autotune)

    def uuid(self):
        return "config-probe-v1"


def test_mode_goes_with_our_settings_through_backend_with():
    # torch.compile refuses mode= with options=, where our settings travel otherwise.
    with pytest.raises(RuntimeError, match="Either mode or options can be specified"):
        torch.compile(chain, backend="fusion_passes", mode="max-autotune-no-cudagraphs", options=CPU_OPTIONS)
    probe = ConfigProbe()
    backend = fusion_passes.backend_with({"devices": ["cpu"]})
    with torch._inductor.config.patch(post_grad_custom_post_pass=probe):
        torch.compile(chain, backend=backend, mode="max-autotune-no-cudagraphs")(*inputs())
    assert probe.max_autotune == [True]
    assert fusion_passes.report().counts() == {"adaln": 1}


def test_backend_with_checks_its_settings_at_once():
    with pytest.raises(ValueError, match=r"fusions: unknown names \['nope'\]"):
        fusion_passes.backend_with({"fusions": ["nope"]})
    backend = fusion_passes.backend_with(FusionConfig(devices=("cpu",)))
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed, match="expected no settings here"):
        torch.compile(chain, backend=backend, options=CPU_OPTIONS)(*inputs())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"fusion_passes": {"fusions": ["nope"]}}, "ValueError: fusions: unknown names ['nope']"),
        ({"fusion_passes": {"device": ["cpu"]}}, "ValueError: options['fusion_passes']: unknown keys ['device']"),
        ({"fusion_passes": {"devices": ["tpu"]}}, "ValueError: devices: unknown device types ['tpu']"),
        ({"fusion_passes": ["cpu"]}, "TypeError: options['fusion_passes']: expected a FusionConfig or a dict, got list"),
        ({"fusion_passes": {"size_rule": "off"}}, "TypeError: size_rule: expected a bool, got str"),
        ({"fusion_passes": {"fusions": 3}}, "TypeError: fusions: expected a name or a list of names, got int"),
        ({"fusion_passes": {"devices": [0]}}, "TypeError: devices: expected names (str), got int 0"),
        ({"not_an_inductor_option": 1}, "Unexpected optimization option not_an_inductor_option"),
    ],
)
def test_bad_options_are_named(options, message):
    # Dynamo wraps backend errors in BackendCompilerFailed, whose text carries ours.
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed) as raised:
        torch.compile(chain, backend="fusion_passes", options=options)(*inputs())
    assert message in str(raised.value)


def test_disabled_fusion_does_not_run():
    torch.compile(chain, backend="fusion_passes", options={"fusion_passes": {"fusions": [], "devices": ["cpu"]}})(
        *inputs()
    )
    report = fusion_passes.report()
    assert report.counts() == {} and report.near_misses == []


def test_users_own_pass_is_chained_not_dropped():
    user_pass = CountingPass()
    with torch._inductor.config.patch(post_grad_custom_post_pass=user_pass):
        torch.compile(chain, backend="fusion_passes", options=CPU_OPTIONS)(*inputs())
    assert user_pass.calls == 1
    assert fusion_passes.report().counts() == {"adaln": 1}

    torch._dynamo.reset()
    via_options = CountingPass()
    options = {**CPU_OPTIONS, "post_grad_custom_post_pass": via_options}
    torch.compile(chain, backend="fusion_passes", options=options)(*inputs())
    assert via_options.calls == 1


@pytest.mark.skipif(
    not hasattr(torch._inductor.custom_graph_pass, "CustomInferenceAwareGraphPass"),
    reason="inference-aware passes exist from torch 2.13",
)
def test_inference_aware_user_pass_is_chained():
    from torch._inductor.custom_graph_pass import CustomInferenceAwareGraphPass

    class InferenceAwarePass(CustomInferenceAwareGraphPass):
        seen = []

        def __call__(self, graph, is_inference):
            self.seen.append(is_inference)

        def uuid(self):
            return "inference-aware-v1"

    user_pass = InferenceAwarePass()
    with torch.no_grad(), torch._inductor.config.patch(post_grad_custom_post_pass=user_pass):
        torch.compile(chain, backend="fusion_passes", options=CPU_OPTIONS)(*inputs())
    assert user_pass.seen == [True]
    assert fusion_passes.report().counts() == {"adaln": 1}


def test_stock_backend_options():
    torch.compile(chain, options=fusion_passes.inductor_options({"devices": ["cpu"]}))(*inputs())
    assert fusion_passes.report().counts() == {"adaln": 1}


def test_stock_backend_context_manager_chains_and_restores():
    user_pass = CountingPass()
    with torch._inductor.config.patch(post_grad_custom_post_pass=user_pass):
        with fusion_passes.enabled(FusionConfig(devices=("cpu",))) as manager:
            assert torch._inductor.config.post_grad_custom_post_pass is manager
            torch.compile(chain)(*inputs())
        assert torch._inductor.config.post_grad_custom_post_pass is user_pass
    assert user_pass.calls == 1
    assert fusion_passes.report().counts() == {"adaln": 1}


def test_the_backend_inside_enabled_runs_the_passes_once():
    user_pass = CountingPass()
    with torch._inductor.config.patch(post_grad_custom_post_pass=user_pass), fusion_passes.enabled(CPU_OPTIONS["fusion_passes"]):
        torch.compile(chain, backend="fusion_passes", options=CPU_OPTIONS)(*inputs())
        with fusion_passes.enabled(CPU_OPTIONS["fusion_passes"]):  # nested: still once
            torch._dynamo.reset()
            torch.compile(chain)(*inputs())
    assert [graph.counts() for graph in fusion_passes.report().graphs] == [{"adaln": 1}, {"adaln": 1}]
    assert user_pass.calls == 2  # the user's own pass, still chained, once per graph


def test_our_passes_installed_twice_with_other_settings_is_an_error():
    expected = r"backend='fusion_passes': fusion_passes is already installed .* with FusionConfig\(fusions=None, devices=\('cpu',\)"
    with fusion_passes.enabled(CPU_OPTIONS["fusion_passes"]):
        with pytest.raises(torch._dynamo.exc.BackendCompilerFailed, match=expected):
            torch.compile(chain, backend="fusion_passes")(*inputs())
        with pytest.raises(ValueError, match=r"inductor_options\(\): fusion_passes is already installed"):
            fusion_passes.inductor_options({"fusions": ["rope"]})


def test_mode_goes_with_our_settings_inside_enabled():
    # The other documented way to give a mode and our settings: enabled() around the stock backend.
    probe = ConfigProbe()
    with torch._inductor.config.patch(post_grad_custom_post_pass=probe), fusion_passes.enabled({"devices": ["cpu"]}):
        torch.compile(chain, mode="max-autotune-no-cudagraphs")(*inputs())
    assert probe.max_autotune == [True]
    assert fusion_passes.report().counts() == {"adaln": 1}


def test_uuid_is_stable_and_tracks_settings():
    uuid = FusionPassManager(FusionConfig()).uuid()
    assert uuid == FusionPassManager(FusionConfig()).uuid()
    assert uuid != FusionPassManager(FusionConfig(devices=("cpu", "cuda"))).uuid()
    assert uuid != FusionPassManager(FusionConfig(fusions=())).uuid()
    assert uuid != FusionPassManager(FusionConfig(size_rule=False)).uuid()
    assert uuid != FusionPassManager(FusionConfig(), chained=CountingPass("v1")).uuid()
    assert (
        FusionPassManager(FusionConfig(), chained=CountingPass("v1")).uuid()
        != FusionPassManager(FusionConfig(), chained=CountingPass("v2")).uuid()
    )


def test_uuid_is_none_when_a_chained_pass_cannot_be_keyed():
    assert FusionPassManager(FusionConfig(), chained=lambda graph: None).uuid() is None
    assert FusionPassManager(FusionConfig(), chained=CountingPass(uuid=None)).uuid() is None


def test_merge_duplicates():
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    first = graph.call_function(torch.ops.aten.split.Tensor, (x, 4, -1))
    second = graph.call_function(torch.ops.aten.split.Tensor, (x, 4, -1))
    a = graph.call_function(torch.ops.aten.mul.Tensor, (graph.call_function(operator.getitem, (first, 0)), 2))
    b = graph.call_function(torch.ops.aten.mul.Tensor, (graph.call_function(operator.getitem, (second, 0)), 3))
    graph.output((a, b))
    assert merge_duplicates(graph) == 2  # the second split and its getitem
    splits = graph.find_nodes(op="call_function", target=torch.ops.aten.split.Tensor)
    assert len(splits) == 1 and len(splits[0].users) == 1


def test_merge_duplicates_merges_pointwise_ops_but_not_random_ones():
    # Qwen-Image computes index == 0 once per modulation tensor; select01 needs to see one condition.
    graph = torch.fx.Graph()
    index = graph.placeholder("index")
    conditions = [graph.call_function(torch.ops.aten.eq.Scalar, (index, 0)) for _ in range(3)]
    noise = [graph.call_function(torch.ops.aten.rand_like.default, (index,)) for _ in range(2)]
    graph.output((*conditions, *noise))
    assert merge_duplicates(graph) == 2
    assert len(graph.find_nodes(op="call_function", target=torch.ops.aten.eq.Scalar)) == 1
    assert len(graph.find_nodes(op="call_function", target=torch.ops.aten.rand_like.default)) == 2


def test_reductions_over_the_last_dim_are_spelled_minus_one():
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    x.meta["val"] = torch.empty(2, 3, 4, device="meta")
    last = graph.call_function(torch.ops.aten.mean.dim, (x, [2], True))
    other = graph.call_function(torch.ops.aten.mean.dim, (x, [1], True))
    graph.output((last, other))
    assert canonicalize_reduction_dims(graph) == 1
    assert last.args[1] == [-1] and other.args[1] == [1]


CACHE_SCRIPT = textwrap.dedent(
    """
    import torch, torch.nn.functional as F
    import fusion_passes
    from torch._dynamo.utils import counters

    def chain(x, emb):
        shift, scale = emb.chunk(2, dim=1)
        return F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]

    compiled = torch.compile(chain, backend="fusion_passes", options={"fusion_passes": {"devices": ["cpu"]}})
    x, emb = torch.randn(2, 8, 16), torch.randn(2, 32)
    compiled(x, emb)
    with torch.profiler.profile() as profile:
        out = compiled(x, emb)
    ran_fused = any("fusion_passes::norm_modulate" in e.name for e in profile.events())
    torch.testing.assert_close(out, chain(x, emb))
    report = fusion_passes.report()
    print(f"hits={counters['inductor']['fxgraph_cache_hit']} fused_op_ran={ran_fused} "
          f"fusions={report.counts().get('adaln', 0)} cache_hit_graphs={sum(g.cache_hit for g in report.graphs)}")
    """
)


def test_fx_graph_cache_hit_still_runs_the_fused_code(tmp_path):
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path), "TORCHINDUCTOR_FX_GRAPH_CACHE": "1"}
    env.pop("TORCHINDUCTOR_FORCE_DISABLE_CACHES", None)
    script = tmp_path / "cache_probe.py"
    script.write_text(CACHE_SCRIPT)

    def run():
        done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.strip().splitlines()[-1]

    assert run() == "hits=0 fused_op_ran=True fusions=1 cache_hit_graphs=0"
    # A new process served from the cache reports what the first one fused.
    assert run() == "hits=1 fused_op_ran=True fusions=1 cache_hit_graphs=1"


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (dict(fusions="adaln"), dict(fusions=("adaln",))),
        (dict(devices="cpu"), dict(devices=("cpu",))),
        (dict(devices=("cpu:0", torch.device("cuda", 1), "cuda")), dict(devices=("cpu", "cuda"))),
        (dict(devices=torch.device("cpu")), dict(devices=("cpu",))),
    ],
)
def test_single_names_and_device_objects_are_settings(settings, expected):
    config = fusion_passes.FusionConfig(**settings)
    for name, value in expected.items():
        assert getattr(config, name) == value


def test_a_mode_without_post_grad_passes_is_reported():
    fn = lambda x: torch.nn.functional.layer_norm(x, x.shape[-1:]) * 2  # noqa: E731
    with pytest.warns(UserWarning, match="post-grad passes are off in this compile"):
        torch.compile(fn, backend="fusion_passes", options={"use_post_grad_passes": False})(torch.randn(2, 8))


def test_the_package_has_a_version():
    assert fusion_passes.__version__ == importlib.metadata.version("fusion-passes")


def test_a_copied_pass_manager_adds_to_the_same_report():
    """AOTInductor deep-copies its config patches: the copy of our pass must still report to the user's report."""
    import copy

    report = fusion_passes.FusionReport()
    manager = FusionPassManager(FusionConfig(devices=("cpu",)), report=report)
    copied = copy.deepcopy(manager)
    assert copied is not manager and copied.report is report and copied.config == manager.config
    assert copied.uuid() == manager.uuid()

