"""`stquant convert` against pip `mlx_lm.convert` on the tiny Hugging Face fixtures.

For every fixture and type, both tools convert the same checkpoint; the tensors must have the
same names, dtypes, shapes and bytes, and config.json the same quantization blocks. Then both
outputs are loaded with mlx_lm.load and generate 20 tokens greedily: the tokens must be equal.

Two fixtures need a prepared input for mlx-lm (not for stquant):
  - tiny-qwen3-moe has a transformers-5 config (num_local_experts, rope_parameters) that mlx-lm
    0.32 cannot read; mlx-lm gets a copy whose config carries num_experts and rope_theta too,
    the same normalization stquant applies to the configs it writes;
  - tiny-qwen3-fp8 is block-FP8, which mlx_lm.convert does not decode for qwen3; mlx-lm gets the
    checkpoint decoded to bf16 with the reference formula bf16(e4m3(W) * S[i//128, j//128]).
"""
import json
import shutil
import subprocess
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

FIXTURES = ["tiny-llama", "tiny-qwen3", "tiny-qwen3-moe", "tiny-qwen3-fp8"]
# (stquant args, mlx_lm.convert args)
TYPES = {
    "int4": (["-q", "int4"], ["-q"]),
    "int8": (["-q", "int8"], ["-q", "--q-bits", "8"]),
    "mxfp4": (["-q", "mxfp4"], ["-q", "--q-mode", "mxfp4"]),
    "mxfp8": (["-q", "mxfp8"], ["-q", "--q-mode", "mxfp8"]),
    "nvfp4": (["-q", "nvfp4"], ["-q", "--q-mode", "nvfp4"]),
    "mixed_3_6": (["-q", "int4", "--recipe", "mixed_3_6"], ["-q", "--quant-predicate", "mixed_3_6"]),
}
PROMPT = "The quick brown fox"


def mlx_lm_input(shared_dir: Path, fixture: str, tmp: Path) -> Path:
    src = shared_dir / "fixtures" / "hf" / fixture
    if fixture not in ("tiny-qwen3-moe", "tiny-qwen3-fp8"):
        return src
    dst = tmp / f"{fixture}-for-mlx-lm"
    if dst.exists():
        return dst
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    if "num_local_experts" in config:
        config.setdefault("num_experts", config["num_local_experts"])
    if "rope_parameters" in config:
        config.setdefault("rope_theta", config["rope_parameters"]["rope_theta"])
    if fixture == "tiny-qwen3-fp8":
        config.pop("quantization_config")
        for shard in dst.glob("*.safetensors"):
            raw_bytes = shard.read_bytes()
            header = json.loads(raw_bytes[8 : 8 + int.from_bytes(raw_bytes[:8], "little")])
            tensors = mx.load(str(shard))  # F8_E4M3 arrives as uint8 codes
            out = {}
            for name, value in tensors.items():
                if name.endswith("_scale_inv"):
                    continue
                if header[name]["dtype"] == "F8_E4M3":
                    scale = np.array(tensors[name + "_scale_inv"].astype(mx.float32))
                    w = np.array(mx.from_fp8(value, mx.float32))  # MLX's decode: 0x7F -> 480
                    s = np.repeat(np.repeat(scale, 128, 0), 128, 1)[: w.shape[0], : w.shape[1]]
                    out[name] = mx.array((w * s).astype(np.float32)).astype(mx.bfloat16)
                else:
                    out[name] = value
            shard.unlink()
            mx.save_safetensors(str(shard), out, metadata={"format": "pt"})
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst


def load_all(directory: Path) -> dict:
    tensors = {}
    for shard in directory.glob("*.safetensors"):
        tensors.update(mx.load(str(shard)))
    return tensors


def raw(a: mx.array) -> np.ndarray:
    return np.array(a.view(mx.uint8)) if a.dtype != mx.bool_ else np.array(a)


def greedy_tokens(model_dir: Path, n: int = 20) -> list:
    from mlx_lm import load, stream_generate

    model, tokenizer = load(str(model_dir))
    return [r.token for r in stream_generate(model, tokenizer, PROMPT, max_tokens=n)]


def normalize_quantization(q: dict) -> dict:
    # mlx-lm writes "group_size": null in recipe entries when --q-group-size is not given (its
    # loader then uses the default 64); stquant writes the group size it used.
    out = {}
    for key, value in q.items():
        if isinstance(value, dict) and value.get("group_size") is None:
            value = dict(value, group_size=q["group_size"])
        out[key] = value
    return out


@pytest.mark.parametrize("type_name", list(TYPES))
@pytest.mark.parametrize("fixture", FIXTURES)
def test_convert_equals_mlx_lm(stquant, shared_dir, tmp_path_factory, fixture, type_name):
    tmp = tmp_path_factory.getbasetemp()
    ours_args, theirs_args = TYPES[type_name]
    ours = tmp / f"stquant-{fixture}-{type_name}"
    theirs = tmp / f"mlx-lm-{fixture}-{type_name}"
    src = shared_dir / "fixtures" / "hf" / fixture
    proc = subprocess.run([str(stquant), "convert", str(src), "-o", str(ours), "--quiet", *ours_args],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    mlx_src = mlx_lm_input(shared_dir, fixture, tmp)
    proc = subprocess.run([str(Path(__import__("sys").executable).parent / "mlx_lm.convert"), "--hf-path", str(mlx_src),
                           "--mlx-path", str(theirs), *theirs_args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr

    a, b = load_all(ours), load_all(theirs)
    assert sorted(a) == sorted(b)
    for name in sorted(a):
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        assert np.array_equal(raw(a[name]), raw(b[name])), f"{name}: bytes differ"
    ca = json.loads((ours / "config.json").read_text())
    cb = json.loads((theirs / "config.json").read_text())
    assert ca["quantization"] == normalize_quantization(cb["quantization"])
    assert ca["quantization_config"] == normalize_quantization(cb["quantization_config"])
    index = json.loads((ours / "model.safetensors.index.json").read_text())
    index_theirs = json.loads((theirs / "model.safetensors.index.json").read_text())
    assert index["metadata"] == index_theirs["metadata"]
    assert sorted(index["weight_map"]) == sorted(index_theirs["weight_map"])

    assert greedy_tokens(ours) == greedy_tokens(theirs)


def test_same_input_twice_gives_identical_directories(stquant, shared_dir, tmp_path):
    src = shared_dir / "fixtures" / "hf" / "tiny-qwen3-moe"
    outs = []
    for i in range(2):
        out = tmp_path / f"run{i}"
        subprocess.run([str(stquant), "convert", str(src), "-o", str(out), "-q", "mxfp4", "--quiet"], check=True)
        outs.append(out)
    files = sorted(p.name for p in outs[0].iterdir())
    assert files == sorted(p.name for p in outs[1].iterdir())
    for name in files:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
