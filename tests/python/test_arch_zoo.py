"""`stquant convert` against `mlx_lm.convert` over the architecture zoo (tests/zoo, tests/python/zoo.py).

Per arch x type: stquant converts the transformers-5 checkpoint, mlx_lm.convert (pip mlx-lm, CPU)
its transformers-4 form (cached under build/zoo-cache); the outputs must have the same tensor
names, dtypes, shapes and bytes, the same quantization blocks, and give the same greedy tokens
in mlx_lm.load. Where mlx_lm.convert itself fails, stquant's output must load and generate in
mlx-lm, or stquant must refuse the checkpoint (exit 2).

By default a representative subset runs (zoo.DEFAULT_SUBSET, with its block-FP8 variants and the
ollama layout); STQUANT_ZOO=all runs every arch. The checks an arch fails today (the baseline,
tests/zoo/STATUS.md) are listed in tests/zoo/known_differences.json and expected to fail
(xfail strict): an entry that starts to pass fails the test until it is taken off the list
(`zoo.py report --known` rewrites the list from a full run). `scripts/zoo-check` runs the same
comparison as a command, one line per arch x type.
"""
import json
import os

import pytest

import zoo
import zoo_check

ARCHS = zoo.archs() if os.environ.get("STQUANT_ZOO") == "all" else zoo.DEFAULT_SUBSET
KNOWN = json.loads((zoo.ZOO / "known_differences.json").read_text())


def expect_known(request, name: str, type_name: str):
    why = KNOWN.get(name, {}).get(type_name)
    if why:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"known difference: {why}"))


def explain(r) -> str:
    return zoo_check.describe(r) + "".join(f"\n  {d['class']}: {d['detail']}: {'; '.join(d['names'][:6])}"
                                     for d in r["diffs"])


@pytest.mark.parametrize("type_name", list(zoo.TYPES))
@pytest.mark.parametrize("arch", ARCHS)
def test_zoo_matches_mlx_lm(stquant, arch, type_name, request):
    expect_known(request, arch, type_name)
    r = zoo_check.check(arch, type_name)
    assert zoo_check.acceptable(r), explain(r)


@pytest.mark.parametrize("type_name", list(zoo.TYPES))
@pytest.mark.parametrize("arch", [a for a in sorted(zoo.FP8_VARIANTS) if a in ARCHS])
def test_zoo_block_fp8_matches_mlx_lm(stquant, arch, type_name, request):
    expect_known(request, arch + "-fp8", type_name)
    r = zoo_check.check(arch, type_name, variant="fp8")
    assert r["reference"]["ok"], r["reference"]["error"]
    assert zoo_check.acceptable(r), explain(r)


@pytest.mark.parametrize("arch", ARCHS)
def test_zoo_ollama_store_matches_mx_quantize(stquant, arch, request):
    expect_known(request, arch, "ollama-int4")
    r = zoo_check.check_ollama(arch)
    assert zoo_check.acceptable(r), explain(r)


def test_fixture_materializes_the_committed_header(tmp_path):
    """The materialized checkpoint has the committed header byte for byte and the exact small
    tensors; the rest is the seeded fill."""
    arch = ARCHS[0]
    d = zoo.materialize(arch, "v5")
    header_text, header = zoo.read_header(d / "model.safetensors")
    assert header_text == (zoo.ZOO / arch / "header.json").read_bytes()
    tensors = zoo.read_tensors(d / "model.safetensors")
    small = zoo.read_tensors(zoo.ZOO / arch / "small.safetensors")
    assert small and all((tensors[n].view("u1") == v.view("u1")).all() for n, v in small.items())
    big = [n for n in tensors if n not in small]
    assert big and all(tensors[n].tobytes() == zoo.fill(n, header[n]["shape"], header[n]["dtype"]).tobytes()
                       for n in big)


def test_every_arch_fits_the_zoo_tokenizer():
    tokenizer = json.loads((zoo.TOKENIZER / "tokenizer.json").read_text())
    size = len(tokenizer["model"]["vocab"])
    assert size == 320
    for arch in zoo.fixtures():
        config = json.loads((zoo.ZOO / arch / "config.json").read_text())
        assert config.get("vocab_size", config.get("text_config", {}).get("vocab_size")) == size, arch


def test_v4_config_rules():
    v5 = {"model_type": "gemma3_text", "dtype": "bfloat16", "hidden_size": 64, "num_attention_heads": 2,
          "num_local_experts": 4,
          "rope_parameters": {"sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"},
                              "full_attention": {"rope_theta": 1e6, "rope_type": "linear", "factor": 8.0,
                                                 "partial_rotary_factor": 0.5}}}
    v4, _ = zoo.v4_config(v5, {})
    assert v4["torch_dtype"] == "bfloat16"
    assert v4["rope_theta"] == 1e6 and v4["partial_rotary_factor"] == 0.5
    assert v4["rope_scaling"] == {"rope_type": "linear", "factor": 8.0}
    assert v4["num_experts"] == 4 and v4["head_dim"] == 32
    assert v5.get("rope_theta") is None  # the input is not modified
    # ModelArgs fields through AutoConfig's attribute_map (exaone: num_layers -> num_hidden_layers).
    v4, missing = zoo.v4_config({"model_type": "exaone", "num_hidden_layers": 2, "rms_norm_eps": 1e-5},
                                {"attribute_map": {"num_layers": "num_hidden_layers",
                                                   "layer_norm_epsilon": "rms_norm_eps"},
                                 "num_hidden_layers": 2, "rms_norm_eps": 1e-5})
    assert v4["num_layers"] == 2 and v4["layer_norm_epsilon"] == 1e-5
    assert "num_layers" not in missing


def test_v4_config_rules_of_the_regenerated_entries():
    # transformers 5's non-finite floats; Mamba-2's inner width expand * hidden_size.
    v4, missing = zoo.v4_config({"model_type": "mamba2", "hidden_size": 64, "expand": 2,
                                 "time_step_limit": [0.0, {"__float__": "Infinity"}]}, {})
    assert v4["time_step_limit"] == [0.0, float("inf")] and v4["intermediate_size"] == 128
    assert "intermediate_size" not in missing
    # BailingHybrid: mlx-lm's layers follow layer_group_size, transformers 5's layer_types.
    v4, _ = zoo.v4_config({"model_type": "bailing_hybrid", "layer_group_size": 6, "num_experts_per_token": 2,
                           "layer_types": ["linear_attention", "full_attention"]}, {})
    assert v4["layer_group_size"] == 2 and v4["num_experts_per_tok"] == 2
    assert v4["architectures"] == ["BailingMoeV3ForCausalLM"]
    v4, _ = zoo.v4_config({"model_type": "kimi_linear", "mlp_layer_types": ["dense", "dense", "sparse"]}, {})
    assert v4["first_k_dense_replace"] == 2


def test_block_fp8_bases_span_several_blocks():
    """The FP8 variants' projections cover more than one 128-block with a partial last one."""
    for arch, (base, _) in zoo.FP8_VARIANTS.items():
        assert base not in zoo.archs() and base in zoo.fixtures()
        header = json.loads((zoo.ZOO / base / "header.json").read_text())
        shapes = [v["shape"] for k, v in header.items() if zoo.FP8_WEIGHT.match(k) and len(v["shape"]) == 2]
        assert any(max(s) > zoo.FP8_BLOCK and max(s) % zoo.FP8_BLOCK for s in shapes), arch
