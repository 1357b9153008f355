"""tools/make_synthetic_model: deterministic, reproduces examples/tiny-model byte for byte, and
writes checkpoints that mlx-lm loads and runs."""
import json
import subprocess
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open

TINY_ARGS = ["--preset", "tiny"]


@pytest.fixture(scope="module")
def tool(build_dir: Path) -> Path:
    path = build_dir / "tools" / "make_synthetic_model"
    if not path.is_file():
        pytest.fail(f"{path} does not exist (build the make_synthetic_model target)")
    return path


def make(tool: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([str(tool), "--out", str(out), *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result


def files_of(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def header_view(d: Path) -> dict:
    """name -> (dtype, shape) of every tensor, through the index (which must agree with the shards)."""
    index = json.loads((d / "model.safetensors.index.json").read_text())
    out = {}
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(str(d / shard), framework="numpy") as st:
            for name in st.keys():
                assert index["weight_map"][name] == shard
                s = st.get_slice(name)
                out[name] = (s.get_dtype(), s.get_shape())
    assert sorted(out) == sorted(index["weight_map"])
    return out


def raw_tensor(path: Path, name: str, np_dtype) -> np.ndarray:
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    begin, end = header[name]["data_offsets"]
    return np.frombuffer(data[8 + n + begin : 8 + n + end], dtype=np_dtype).reshape(header[name]["shape"])


def tensor(d: Path, name: str, np_dtype) -> np.ndarray:
    index = json.loads((d / "model.safetensors.index.json").read_text())
    return raw_tensor(d / index["weight_map"][name], name, np_dtype)


def test_reproduces_bundled_example(tool, repo_root, shared_dir, tmp_path):
    out = tmp_path / "tiny"
    make(tool, out, *TINY_ARGS, "--tokenizer-from", str(shared_dir / "fixtures" / "hf" / "tiny-qwen3-moe"))
    assert files_of(out) == files_of(repo_root / "examples" / "tiny-model")


def test_deterministic(tool, tmp_path):
    for variant in ([], ["--fp8"], ["--seed", "7"]):
        make(tool, tmp_path / "a", *TINY_ARGS, *variant, "--force")
        make(tool, tmp_path / "b", *TINY_ARGS, *variant, "--force")
        assert files_of(tmp_path / "a") == files_of(tmp_path / "b")
    # A different seed gives different weights.
    make(tool, tmp_path / "c", *TINY_ARGS)
    assert files_of(tmp_path / "c")["model-00001-of-00002.safetensors"] != \
        files_of(tmp_path / "b")["model-00001-of-00002.safetensors"]


def test_layout_and_values(tool, tmp_path):
    out = tmp_path / "tiny"
    make(tool, out, *TINY_ARGS)
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "generation_config.json", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors", "model.safetensors.index.json"]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen3_moe"
    assert config["mlp_only_layers"] == [0]
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_experts"],
            config["num_experts_per_tok"], config["moe_intermediate_size"], config["intermediate_size"],
            config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"],
            config["vocab_size"], config["tie_word_embeddings"], config["torch_dtype"]) == \
        (256, 2, 4, 2, 128, 512, 4, 2, 64, 512, False, "bfloat16")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    names = list(index["weight_map"])
    assert names == sorted(names)
    assert len(names) == 35
    for expected in ["model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
                     "model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.gate.weight",
                     "model.layers.1.mlp.experts.3.up_proj.weight", "model.layers.1.self_attn.k_norm.weight"]:
        assert expected in index["weight_map"]
    tensors = header_view(out)
    assert {dtype for dtype, _ in tensors.values()} == {"BF16"}
    assert index["metadata"]["total_size"] == sum(int(np.prod(shape)) * 2 for _, shape in tensors.values())

    w = tensor(out, "model.layers.1.mlp.experts.0.gate_proj.weight", ml_dtypes.bfloat16).astype(np.float32)
    assert w.shape == (128, 256)
    assert abs(w.std() - 0.02) < 0.003
    assert abs(w.mean()) < 0.002
    norm = tensor(out, "model.layers.0.input_layernorm.weight", ml_dtypes.bfloat16).astype(np.float32)
    assert abs(norm.mean() - 1.0) < 0.02 and norm.std() < 0.1
    # A few outliers across the embedding (8-16x the scale), not many.
    emb = tensor(out, "model.embed_tokens.weight", ml_dtypes.bfloat16).astype(np.float32)
    outliers = np.sum(np.abs(emb) > 0.15)
    assert 10 <= outliers <= 200


def test_fp8_variant(tool, tmp_path):
    make(tool, tmp_path / "bf16", *TINY_ARGS)
    make(tool, tmp_path / "fp8", *TINY_ARGS, "--fp8")
    config = json.loads((tmp_path / "fp8" / "config.json").read_text())
    assert config["quantization_config"] == {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                             "weight_block_size": [128, 128]}
    index = json.loads((tmp_path / "fp8" / "model.safetensors.index.json").read_text())
    assert "model.layers.1.mlp.experts.2.down_proj.weight_scale_inv" in index["weight_map"]
    assert "model.layers.1.mlp.gate.weight_scale_inv" not in index["weight_map"]  # the router stays bf16
    name = "model.layers.0.mlp.down_proj.weight"  # [256, 512]: 2 x 4 blocks
    codes = tensor(tmp_path / "fp8", name, ml_dtypes.float8_e4m3fn).astype(np.float32)
    scales = tensor(tmp_path / "fp8", name + "_scale_inv", np.float32)
    assert codes.shape == (256, 512) and scales.shape == (2, 4)
    assert np.abs(codes).max() == 448  # each block's amax maps to the top of E4M3
    decoded = codes * np.kron(scales, np.ones((128, 128), np.float32))
    reference = tensor(tmp_path / "bf16", name, ml_dtypes.bfloat16).astype(np.float32)
    rel_rms = np.sqrt(np.mean((decoded - reference) ** 2)) / reference.std()
    assert rel_rms < 0.05


def test_target_bytes(tool, tmp_path):
    out = tmp_path / "big"
    make(tool, out, "--target-bytes", "40000000", "--shard-bytes", "10000000")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    total = index["metadata"]["total_size"]
    assert 0.6 * 40e6 < total < 1.4 * 40e6
    shards = sorted(p for p in out.glob("*.safetensors"))
    assert len(shards) >= 4
    assert all(p.stat().st_size <= 10_000_000 + 100_000 for p in shards)
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] >= 2 and config["hidden_size"] >= 256


def test_refuses_non_empty_output(tool, tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    result = subprocess.run([str(tool), "--out", str(tmp_path), *TINY_ARGS], capture_output=True, text=True)
    assert result.returncode == 2
    assert "not empty" in result.stderr


def test_loads_and_runs_in_mlx_lm(repo_root):
    import mlx.core as mx
    from mlx_lm import load

    model, tokenizer = load(str(repo_root / "examples" / "tiny-model"))
    model.set_dtype(mx.float32)  # MLX's CPU gather matmul (the experts) is float32-only
    logits = model(mx.array([tokenizer.encode("hello world")]))
    mx.eval(logits)
    assert logits.shape[-1] == 512
    assert bool(mx.all(mx.isfinite(logits)).item())
