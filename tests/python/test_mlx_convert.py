"""`stquant mlx-convert` against `python -m mlx_lm convert` (pip mlx-lm 0.32.2): the same argument
list through both, on the tiny Hugging Face fixtures; the output directories must hold the same
tensors (names, dtypes, shapes, bytes) and config.json the same quantization blocks.

tiny-qwen3-moe has a transformers-5 config mlx-lm cannot read: both tools get the copy that
test_convert_vs_mlx_lm.py prepares for mlx-lm (same input for both).
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_convert_vs_mlx_lm import load_all, mlx_lm_input, normalize_quantization, raw

CASES = [
    ("tiny-llama", ["-q"]),
    ("tiny-llama", ["--quantize", "--q-bits", "8", "--q-group-size", "32"]),
    ("tiny-llama", ["-q", "--q-mode", "mxfp8"]),
    ("tiny-llama", ["-q", "--q-mode", "nvfp4", "--dtype", "float32"]),
    ("tiny-llama", ["--dtype", "float16"]),
    ("tiny-llama", ["-q", "--quant-predicate", "mixed_2_6"]),
    ("tiny-qwen3", ["-q", "--q-bits", "3", "--dtype", "float16"]),
    ("tiny-qwen3", ["--model", "SRC", "-q", "--q-mode", "mxfp4", "--trust-remote-code"]),
    ("tiny-qwen3-moe", ["-q", "--q-group-size", "128", "--q-bits", "6"]),
]


def mlx_lm_convert(args):
    return subprocess.run([sys.executable, "-m", "mlx_lm", "convert", *args], capture_output=True, text=True)


def with_paths(args, src: Path, out: Path):
    if "SRC" in args:
        args = [str(src) if a == "SRC" else a for a in args]
    else:
        args = ["--hf-path", str(src), *args]
    return [*args, "--mlx-path", str(out)]


def assert_same_directories(ours: Path, theirs: Path):
    a, b = load_all(ours), load_all(theirs)
    assert sorted(a) == sorted(b)
    for name in sorted(a):
        assert (a[name].dtype, a[name].shape) == (b[name].dtype, b[name].shape), name
        assert (raw(a[name]) == raw(b[name])).all(), f"{name}: bytes differ"
    ca = json.loads((ours / "config.json").read_text())
    cb = json.loads((theirs / "config.json").read_text())
    for key in ("quantization", "quantization_config"):
        assert (key in ca) == (key in cb), key
        if key in cb:
            assert ca[key] == normalize_quantization(cb[key]), key


@pytest.mark.parametrize("fixture,args", CASES, ids=[f"{f}:{' '.join(a)}" for f, a in CASES])
def test_mlx_convert_equals_mlx_lm(stquant, shared_dir, tmp_path_factory, fixture, args):
    tmp = tmp_path_factory.mktemp("mlx-convert")
    src = mlx_lm_input(shared_dir, fixture, tmp_path_factory.getbasetemp())
    ours, theirs = tmp / "ours", tmp / "theirs"
    p = subprocess.run([str(stquant), "mlx-convert", *with_paths(args, src, ours)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    p = mlx_lm_convert(with_paths(args, src, theirs))
    assert p.returncode == 0, p.stderr
    assert_same_directories(ours, theirs)


@pytest.mark.parametrize("quantize_args", [["-q"], ["-q", "--q-mode", "mxfp4"]])
def test_dequantize_equals_mlx_lm(stquant, shared_dir, tmp_path, quantize_args):
    """-d on an MLX-quantized model: every layer back to floats, with MLX's dequantize."""
    quantized = tmp_path / "quantized"
    p = mlx_lm_convert(with_paths(quantize_args, shared_dir / "fixtures/hf/tiny-llama", quantized))
    assert p.returncode == 0, p.stderr
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    p = subprocess.run([str(stquant), "mlx-convert", *with_paths(["-d"], quantized, ours)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert mlx_lm_convert(with_paths(["-d"], quantized, theirs)).returncode == 0
    assert_same_directories(ours, theirs)
    assert "quantization" not in json.loads((ours / "config.json").read_text())


@pytest.mark.parametrize("args,message", [
    (["-q", "-d"], "Choose either quantize or dequantize, not both."),
    (["-q", "--q-mode", "mxfp4", "--quant-predicate", "mixed_3_4"], "Quant predicates only support 'affine' quantization."),
    (["--upload-repo", "me/model"], "--upload-repo needs the network"),
    (["-q", "--q-bits", "7"], "[quantize] The requested number of bits 7 is not supported"),
])
def test_refusals_are_mlx_lm_s(stquant, shared_dir, tmp_path, args, message):
    out = tmp_path / "out"
    p = subprocess.run([str(stquant), "mlx-convert", *with_paths(args, shared_dir / "fixtures/hf/tiny-llama", out)],
                       capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("stquant: error: ") and message in p.stderr and len(p.stderr.splitlines()) == 1
    assert not out.exists()


def test_existing_mlx_path_and_default_name(stquant, shared_dir, tmp_path):
    (tmp_path / "mlx_model").mkdir()
    p = subprocess.run([str(stquant), "mlx-convert", "--hf-path", str(shared_dir / "fixtures/hf/tiny-llama")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 2 and "Cannot save to the path mlx_model as it already exists." in p.stderr
    (tmp_path / "mlx_model").rmdir()
    p = subprocess.run([str(stquant), "mlx-convert", "--hf-path", str(shared_dir / "fixtures/hf/tiny-llama")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "mlx_model" / "config.json").is_file()
