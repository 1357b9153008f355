"""`stquant inspect --json` against the Python safetensors package's view of the same files, and
against models that mlx-lm itself quantized."""
import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest
from safetensors import safe_open

FIXTURES = ["tiny-llama", "tiny-qwen3", "tiny-qwen3-fp8", "tiny-qwen3-moe"]
ITEM_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E5M2": 8, "U16": 16, "I16": 16, "F16": 16,
             "BF16": 16, "U32": 32, "I32": 32, "F32": 32, "U64": 64, "I64": 64, "F64": 64}


def inspect_json(stquant: Path, path: Path) -> dict:
    out = subprocess.run([str(stquant), "inspect", "--json", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    return json.loads(out.stdout)


def python_view(files):
    """name -> (dtype, shape, bytes, shard file name), as the safetensors package reads the headers."""
    view = {}
    for f in files:
        with safe_open(str(f), framework="numpy") as st:
            for name in st.keys():
                s = st.get_slice(name)
                shape = list(s.get_shape())
                dtype = s.get_dtype()
                assert name not in view, f"{name} in two shards"
                view[name] = (dtype, shape, math.prod(shape) * ITEM_BITS[dtype] // 8, f.name)
    return view


def check_report(report: dict, files) -> None:
    expected = python_view(files)
    got = {t["name"]: (t["dtype"], t["shape"], t["bytes"], t["shard"]) for t in report["tensors"]}
    assert got == expected
    assert [t["name"] for t in report["tensors"]] == sorted(expected)
    assert report["totals"]["tensors"] == len(expected)
    assert report["totals"]["bytes"] == sum(v[2] for v in expected.values())
    by_dtype = {}
    for dtype, _, nbytes, _ in expected.values():
        entry = by_dtype.setdefault(dtype, {"tensors": 0, "bytes": 0})
        entry["tensors"] += 1
        entry["bytes"] += nbytes
    assert report["totals"]["by_dtype"] == by_dtype
    assert [s["file"] for s in report["shards"]] == sorted(f.name for f in files)
    for s in report["shards"]:
        assert s["file_bytes"] == next(f for f in files if f.name == s["file"]).stat().st_size


@pytest.mark.parametrize("fixture", FIXTURES)
def test_fixture_directory(stquant, shared_dir, fixture):
    model = shared_dir / "fixtures" / "hf" / fixture
    report = inspect_json(stquant, model)
    assert report["is_directory"] is True
    check_report(report, sorted(model.glob("*.safetensors")))
    config = json.loads((model / "config.json").read_text())
    assert report["architecture"] == config["architectures"][0]
    assert report["source_kind"] == ("block-fp8" if "fp8" in fixture else "float")
    assert report["quantized"] == []


@pytest.mark.parametrize("fixture", FIXTURES)
def test_fixture_files(stquant, shared_dir, fixture):
    for f in sorted((shared_dir / "fixtures" / "hf" / fixture).glob("*.safetensors")):
        report = inspect_json(stquant, f)
        assert report["is_directory"] is False
        assert report["architecture"] == ""
        check_report(report, [f])


def test_bundled_example(stquant, repo_root):
    model = repo_root / "examples" / "tiny-model"
    report = inspect_json(stquant, model)
    check_report(report, sorted(model.glob("*.safetensors")))
    assert report["source_kind"] == "float"
    assert report["totals"]["tensors"] == 35
    assert len(report["shards"]) == 2


@pytest.mark.parametrize("mode,bits,group_size", [("affine", 4, 64), ("affine", 8, 32), ("mxfp4", 4, 32)])
def test_mlx_lm_quantized(stquant, repo_root, tmp_path, mode, bits, group_size):
    """A model quantized by mlx-lm itself: every layer it quantized is reported with its parameters,
    from config.json and, with the quantization block removed, from the shapes alone."""
    from mlx_lm import convert

    out = tmp_path / "mlx"
    convert(str(repo_root / "examples" / "tiny-model"), mlx_path=str(out), quantize=True, q_bits=bits,
            q_group_size=group_size, q_mode=mode)
    files = sorted(out.glob("*.safetensors"))
    view = python_view(files)
    quantized = sorted(name[: -len(".scales")] for name in view if name.endswith(".scales"))
    assert quantized, "mlx-lm quantized nothing"

    config = json.loads((out / "config.json").read_text())
    block = config["quantization"]
    assert (block["mode"], block["bits"], block["group_size"]) == (mode, bits, group_size)

    def from_config(name):
        # As mlx-lm's class_predicate: a per-layer dict (whose mode defaults to affine) or the block.
        layer = block.get(name)
        if isinstance(layer, dict):
            return layer.get("mode", "affine"), layer["bits"], layer["group_size"]
        return block["mode"], block["bits"], block["group_size"]

    report = inspect_json(stquant, out)
    check_report(report, files)
    assert report["source_kind"] == "mlx"
    assert [q["name"] for q in report["quantized"]] == quantized
    for q in report["quantized"]:
        assert (q["mode"], q["bits"], q["group_size"], q["source"]) == (*from_config(q["name"]), "config")
    assert sum(q["mode"] == mode and q["bits"] == bits for q in report["quantized"]) >= len(quantized) - 1

    def from_shapes(name):
        # Shapes fix only bits * group_size for affine; 4/64 and 8/32 are both "8 words per group",
        # and MLX's default group size 64 is preferred, then 32, then 128.
        m, b, g = from_config(name)
        if m != "affine":
            return m, b, g
        for gs in (64, 32, 128):
            if b * g % gs == 0 and b * g // gs in (2, 3, 4, 5, 6, 8):
                return m, b * g // gs, gs

    config.pop("quantization")
    config.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(config))
    report = inspect_json(stquant, out)
    for q in report["quantized"]:
        assert (q["mode"], q["bits"], q["group_size"], q["source"]) == (*from_shapes(q["name"]), "inferred")


@pytest.mark.parametrize(
    "setup,message",
    [
        (lambda d: None, "has no config.json"),
        (lambda d: (d / "config.json").write_text("[]"), "expected a JSON object"),
        (lambda d: (d / "config.json").write_text("{"), "invalid JSON"),
    ],
)
def test_bad_directories(stquant, tmp_path, setup, message):
    setup(tmp_path)
    out = subprocess.run([str(stquant), "inspect", "--json", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.startswith("stquant: error: ")
    assert message in out.stderr


def test_truncated_shard(stquant, shared_dir, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(shared_dir / "fixtures" / "hf" / "tiny-llama", model)
    shard = model / "model.safetensors"
    shard.chmod(0o644)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    out = subprocess.run([str(stquant), "inspect", str(model)], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.startswith(f"stquant: error: {shard}")
