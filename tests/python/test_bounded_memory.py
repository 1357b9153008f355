"""Memory stays bounded by the streaming block, not by the size of a row: hostile shapes such as
one row of 2^28 elements (512 MiB of bfloat16) are read, decoded, quantized and written in parts.

The inputs are sparse files (their values are zeros), so they take no room on disk; the peak RSS
of each stquant process (os.wait4) must stay under MAX_RSS, far below the row size."""
from __future__ import annotations

import json
import math
import os
import struct
import subprocess
from pathlib import Path

import pytest

ROW = 1 << 28  # elements of the one huge row (512 MiB of bfloat16)
MAX_RSS = 300 << 20  # bytes
ITEM_BITS = {"BF16": 16, "F32": 32, "U32": 32, "U8": 8, "F8_E4M3": 8}


def sparse_file(path: Path, tensors: dict) -> Path:
    """A safetensors file of zeros: tensors is name -> (dtype, shape); the data is a hole."""
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        nbytes = math.prod(shape) * ITEM_BITS[dtype] // 8
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        f.truncate(8 + len(text) + offset)
    return path


def sparse_model(root: Path, tensors: dict, config: dict) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(config))
    sparse_file(root / "model.safetensors", tensors)
    return root


def run_measured(args: list) -> tuple[int, str, int]:
    """Runs a command; returns its exit code, stderr and peak RSS in bytes."""
    proc = subprocess.Popen([str(a) for a in args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, stderr, usage.ru_maxrss * 1024


def check_bounded(args: list, max_rss: int = MAX_RSS) -> None:
    rc, stderr, rss = run_measured(args)
    assert rc == 0, stderr
    assert rss < max_rss, f"peak RSS {rss >> 20} MiB (bound {max_rss >> 20} MiB): {' '.join(map(str, args))}"


def write_tensor_bytes(path: Path, name: str, data: bytes) -> None:
    """Writes `data` at the start of tensor `name` of a (sparse) safetensors file."""
    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        begin = json.loads(f.read(n))[name]["data_offsets"][0]
        f.seek(8 + n + begin)
        f.write(data)


@pytest.fixture
def work(tmp_path):
    yield tmp_path
    # The outputs are real (GiB) files: drop them right away.
    subprocess.run(["rm", "-rf", str(tmp_path)], check=False)


def test_quantize_copies_a_huge_kept_row_in_parts(stquant, work):
    src = sparse_file(work / "in.safetensors", {"norm": ("BF16", [ROW])})
    check_bounded([stquant, "quantize", src, "-o", work / "out.safetensors", "-q", "int4"])
    assert (work / "out.safetensors").stat().st_size > ROW * 2


@pytest.mark.parametrize("quant", ["int4", "nvfp4"])
def test_quantize_and_dequantize_a_huge_row_in_parts(stquant, work, quant):
    src = sparse_file(work / "in.safetensors", {"w": ("BF16", [1, ROW])})
    args = ["--global-scale"] if quant == "nvfp4" else []
    check_bounded([stquant, "quantize", src, "-o", work / "q.safetensors", "-q", quant, *args])
    check_bounded([stquant, "dequantize", work / "q.safetensors", "-o", work / "dq.safetensors"])


def test_convert_copies_a_huge_row_in_parts(stquant, work):
    model = sparse_model(work / "m", {"model.norm.weight": ("BF16", [ROW])}, {"model_type": "qwen3"})
    check_bounded([stquant, "convert", model, "-o", work / "out", "--quiet"])


@pytest.mark.parametrize("layout", ["mlx", "ollama"])
def test_convert_decodes_and_quantizes_a_huge_fp8_row_in_parts(stquant, work, layout):
    name = "model.layers.0.mlp.down_proj"
    model = sparse_model(work / "m", {f"{name}.weight": ("F8_E4M3", [1, ROW]),
                                      f"{name}.weight_scale_inv": ("F32", [1, ROW // 128])},
                         {"model_type": "qwen3",
                          "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}})
    out = ["-o", work / "out"] if layout == "mlx" else ["--layout", "ollama", "--name", "huge",
                                                        "--models-dir", work / "store"]
    check_bounded([stquant, "convert", model, *out, "-q", "int4", "--quiet"])


def test_requantize_dequantizes_a_huge_mlx_row_in_parts(stquant, work):
    # An MLX 4-bit layer whose one row dequantizes to ROW bfloat16 values.
    name = "model.layers.0.mlp.down_proj"
    model = sparse_model(work / "m", {f"{name}.weight": ("U32", [1, ROW // 8]),
                                      f"{name}.scales": ("BF16", [1, ROW // 64]),
                                      f"{name}.biases": ("BF16", [1, ROW // 64])},
                         {"model_type": "qwen3", "quantization": {"group_size": 64, "bits": 4}})
    check_bounded([stquant, "convert", model, "-o", work / "out", "-q", "int8", "--requantize", "--quiet"])


def test_prequant_import_folds_a_huge_nvfp4_scale_tensor_in_parts(stquant, work):
    # ModelOpt NVFP4, dense: weight_scale_2 is folded into the E4M3 block scales (mlx layout), a
    # 256 MiB scale tensor read and rewritten in parts (it was read whole).
    name = "model.layers.0.mlp.down_proj"
    rows, cols = 1 << 17, 1 << 15
    model = sparse_model(work / "m", {f"{name}.weight": ("U8", [rows, cols // 2]),
                                      f"{name}.weight_scale": ("F8_E4M3", [rows, cols // 16]),
                                      f"{name}.weight_scale_2": ("F32", [])}, {"model_type": "qwen3"})
    write_tensor_bytes(model / "model.safetensors", f"{name}.weight_scale_2", struct.pack("<f", 1.0))
    check_bounded([stquant, "convert", model, "-o", work / "out", "--quiet"], max_rss=200 << 20)


@pytest.mark.parametrize("quant", [[], ["-q", "int4"]])
def test_convert_transposes_a_large_tensor_in_tiles(stquant, work, quant):
    # GPT-2's Conv1D weights are transposed (src/model/arch/gpt2.json): a 512 MiB [16384, 16384]
    # one is read in tiles of column runs, never whole.
    model = sparse_model(work / "m", {"h.0.attn.c_attn.weight": ("BF16", [1 << 14, 1 << 14])}, {"model_type": "gpt2"})
    check_bounded([stquant, "convert", model, "-o", work / "out", *quant, "--quiet"])
    assert (work / "out" / "model.safetensors").stat().st_size > (1 << 26)
