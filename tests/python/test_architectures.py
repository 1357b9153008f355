"""The architecture table from the command line (src/model/arch, README "Architectures"):
refusal of model_types the table lacks and --allow-unknown-architecture, `inspect`'s verdict,
--dry-run's rules and views, rule errors on checkpoints that do not fit their entry, and two
comparisons with mlx_lm.convert that the zoo harness (test_arch_zoo.py) cannot make on the zoo's
own transformers-4 form: the cast predicate (config dtype float16, DeepSeek-V3's
e_score_correction_bias kept in float32) and GPT-2 under the Hugging Face hub's tensor names
(mlx-lm's sanitize transposes only those; transformers 5 writes them under transformer.)."""
import json
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

import zoo
import zoo_check

TABLE = [json.loads(p.read_text()) for p in sorted((zoo.REPO / "src" / "model" / "arch").glob("[a-z]*.json"))]
# Every model_type a verified entry claims that has a zoo checkpoint (aliases included).
VERIFIED_ZOO = sorted(t for e in TABLE if e["status"] == "verified" for t in [e["model_type"], *e.get("aliases", [])]
                      if t in zoo.archs())


def model_dir(root: Path, tensors: dict, config: dict) -> Path:
    """tensors: name -> (dtype, shape), zeros."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(config))
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = int(np.prod(shape)) * {"BF16": 2, "F32": 4}[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    (root / "model.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + bytes(offset))
    return root


def run(stquant, *args):
    return subprocess.run([str(stquant), *map(str, args)], capture_output=True, text=True)


TENSORS = {"model.embed_tokens.weight": ("BF16", [64, 64]), "model.layers.0.mlp.down_proj.weight": ("BF16", [64, 64])}


def test_unknown_model_type_is_refused_unless_allowed(stquant, tmp_path):
    src = model_dir(tmp_path / "m", TENSORS, {"model_type": "no_such_model"})
    proc = run(stquant, "convert", src, "-o", tmp_path / "out", "-q", "int4")
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert line.count("\n") == 0 and line.startswith("stquant: error: ")
    assert "model_type 'no_such_model' is not in stquant's architecture table" in line
    assert "--allow-unknown-architecture" in line and "src/model/arch/README.md" in line
    assert not (tmp_path / "out").exists()
    proc = run(stquant, "convert", src, "-o", tmp_path / "out", "-q", "int4", "--allow-unknown-architecture")
    assert proc.returncode == 0, proc.stderr
    assert "architecture 'no_such_model' is not one stquant has checked" in proc.stderr
    # The ollama layout has its own naming: no verdict needed.
    proc = run(stquant, "convert", src, "--layout", "ollama", "--name", "x", "--models-dir", tmp_path / "store", "-q", "int4")
    assert proc.returncode == 0, proc.stderr


def test_config_without_model_type_is_refused(stquant, tmp_path):
    src = model_dir(tmp_path / "m", TENSORS, {})
    proc = run(stquant, "convert", src, "-o", tmp_path / "out")
    assert proc.returncode == 2 and "model_type '(none)'" in proc.stderr


@pytest.mark.parametrize("model_type,status,note", [
    ("qwen3", "verified", ""),
    ("mistral", "verified", "converted with the rules of 'llama'"),
    ("no_such_model", "unknown", "--allow-unknown-architecture"),
])
def test_inspect_names_the_verdict(stquant, tmp_path, model_type, status, note):
    src = model_dir(tmp_path / "m", TENSORS, {"model_type": model_type})
    report = json.loads(run(stquant, "inspect", src, "--json").stdout)
    assert report["model_type"] == model_type and report["architecture_status"] == status
    assert note in report["architecture_note"]
    text = run(stquant, "inspect", src).stdout
    assert f"model_type: {model_type} (" in text
    # A single file has no config: no verdict.
    report = json.loads(run(stquant, "inspect", src / "model.safetensors", "--json").stdout)
    assert report["architecture_status"] == ""


def deepseek_tensors(kv_b_rows=2 * (16 + 32)):
    return {"model.layers.0.self_attn.kv_b_proj.weight": ("BF16", [kv_b_rows, 32]),
            "model.layers.0.mlp.gate.weight": ("BF16", [4, 64]),
            "model.layers.0.mlp.gate.e_score_correction_bias": ("F32", [4]),
            "model.layers.1.mlp.down_proj.weight": ("BF16", [64, 64])}


DEEPSEEK = {"model_type": "deepseek_v3", "num_hidden_layers": 1, "num_attention_heads": 2, "qk_nope_head_dim": 16,
            "v_head_dim": 32, "n_routed_experts": 4}


def test_dry_run_shows_rules_and_views(stquant, tmp_path):
    src = model_dir(tmp_path / "m", deepseek_tensors(), DEEPSEEK)
    plan = json.loads(run(stquant, "convert", src, "-o", tmp_path / "out", "-q", "int4", "--dry-run", "--json").stdout)
    tensors = {t["name"]: t for t in plan["tensors"]}
    # Layer 1 is past num_hidden_layers (the multi-token-prediction layer): dropped.
    assert sorted(tensors) == ["model.layers.0.mlp.gate.e_score_correction_bias", "model.layers.0.mlp.gate.weight",
                               "model.layers.0.self_attn.embed_q.weight", "model.layers.0.self_attn.unembed_out.weight"]
    q = tensors["model.layers.0.self_attn.embed_q.weight"]
    assert q["shape"] == [2, 32, 16]
    assert q["steps"] == ["reshape (2, 48, 32)", "split axis 1 [0:16] of 'model.layers.0.self_attn.kv_b_proj.weight'",
                          "transpose (0, 2, 1)"]
    assert q["sources"] == [{"tensor": "model.layers.0.self_attn.kv_b_proj.weight",
                             "view": {"offset": 0, "shape": [2, 32, 16], "strides": [1536, 1, 32]}}]
    assert tensors["model.layers.0.self_attn.unembed_out.weight"]["sources"][0]["view"]["offset"] == 512
    assert tensors["model.layers.0.mlp.gate.weight"]["quant"] is None  # MoEGate: no to_quantized
    text = run(stquant, "convert", src, "-o", tmp_path / "out", "-q", "int4", "--dry-run").stdout
    assert "transpose (0, 2, 1)" in text


def test_a_checkpoint_that_does_not_fit_its_entry_is_refused(stquant, tmp_path):
    src = model_dir(tmp_path / "m", deepseek_tensors(kv_b_rows=100), DEEPSEEK)
    proc = run(stquant, "convert", src, "-o", tmp_path / "out", "-q", "int4")
    assert proc.returncode == 2
    for part in [str(src), "architecture 'deepseek_v3'", "src/model/arch/deepseek_v3.json sanitize[2] (reshape",
                 "tensor 'model.layers.0.self_attn.kv_b_proj.weight'", "[100, 32] cannot be reshaped to [2, 48, -1]"]:
        assert part in proc.stderr
    src = model_dir(tmp_path / "n", deepseek_tensors(), {k: v for k, v in DEEPSEEK.items() if k != "v_head_dim"})
    proc = run(stquant, "convert", src, "-o", tmp_path / "out", "-q", "int4")
    assert proc.returncode == 2 and "config field 'v_head_dim' is missing" in proc.stderr


def compare_with_mlx_lm(stquant, src_ours: Path, src_theirs: Path, tmp_path: Path, type_name: str):
    ours, theirs = tmp_path / f"ours-{type_name}", tmp_path / f"theirs-{type_name}"
    proc = zoo_check.run_stquant(src_ours, ours, type_name)
    assert proc.returncode == 0, proc.stderr
    zoo_check.run_mlx_lm_convert(src_theirs, theirs, type_name)
    assert zoo_check.compare_dirs(ours, theirs) == []
    assert zoo_check.greedy_tokens(ours) == zoo_check.greedy_tokens(theirs)


def copy_with(src: Path, dst: Path, config_update: dict, rename=lambda n: n, retype=lambda n, a: a) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(config_update)
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    tensors = {rename(n): retype(n, a) for n, a in zoo.read_tensors(src / "model.safetensors").items()}
    (dst / "model.safetensors").unlink()
    zoo.write_safetensors(dst / "model.safetensors", tensors, metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("type_name", ["none", "int4"])
def test_cast_predicate_keeps_e_score_correction_bias(stquant, tmp_path, type_name):
    # DeepSeek-V3 stores e_score_correction_bias in float32; with config dtype float16 mlx-lm casts
    # every other floating parameter (cast_predicate).
    f32 = lambda n, a: a.astype(np.float32) if "e_score_correction_bias" in n else a  # noqa: E731
    ours = copy_with(zoo.materialize("deepseek_v3", "v5"), tmp_path / "v5", {"dtype": "float16"}, retype=f32)
    theirs = copy_with(zoo.materialize("deepseek_v3", "v4"), tmp_path / "v4", {"torch_dtype": "float16"}, retype=f32)
    compare_with_mlx_lm(stquant, ours, theirs, tmp_path, type_name)
    header = zoo_check.load_outputs(tmp_path / f"ours-{type_name}")[0]
    assert header["model.layers.1.mlp.gate.e_score_correction_bias"][0] == "F32"
    assert header["model.norm.weight"][0] == "F16"


@pytest.mark.parametrize("type_name", ["none", "int4", "mxfp4", "nvfp4", "mxfp8"])
def test_gpt2_conv1d_transposes_equal_mlx_lm(stquant, tmp_path, type_name):
    # mlx_lm.convert of the hub's names (h.0.attn.c_attn.weight) against stquant of transformers
    # 5's (transformer.h.0.attn.c_attn.weight).
    theirs = copy_with(zoo.materialize("gpt2", "v4"), tmp_path / "hub", {}, rename=lambda n: n.removeprefix("transformer."))
    compare_with_mlx_lm(stquant, zoo.materialize("gpt2", "v5"), theirs, tmp_path, type_name)


@pytest.mark.parametrize("type_name", ["int4", "nvfp4"])
@pytest.mark.parametrize("arch", VERIFIED_ZOO)
def test_verified_entries_hold_on_the_zoo(stquant, arch, type_name):
    """A verified entry converts its zoo checkpoint as mlx_lm.convert does (or, where mlx_lm.convert
    cannot read the zoo's transformers-4 config, into a model mlx-lm loads and runs); every type and
    the block-FP8 variants: scripts/zoo-check."""
    r = zoo_check.check(arch, type_name)
    assert r["stquant"] == "ok", zoo_check.describe(r)
    assert zoo_check.acceptable(r), zoo_check.describe(r) + "".join(f"\n  {d['class']}: {d['detail']}: {d['names'][:4]}" for d in r["diffs"])


def test_the_table_covers_the_issue_architectures():
    assert {"llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "mixtral", "deepseek_v3", "gptj", "gpt2", "mamba",
            "granitemoe", "qwen3_next"} <= set(VERIFIED_ZOO)
