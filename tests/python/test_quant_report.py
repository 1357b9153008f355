"""`stquant convert --report FILE.json` / `--verbose` (issue 16 item 3): every quantized tensor's
error, measured in the conversion's pass, checked against pip MLX's own dequantization of the
written fields."""
import json
import subprocess
from pathlib import Path

import mlx.core as mx
import ml_dtypes
import numpy as np
import pytest

from test_prequant_import import write_st

TYPES = ["int2", "int3", "int4", "int8", "mxfp4", "mxfp8", "nvfp4"]


def convert(stquant, src, out, *args):
    p = subprocess.run([str(stquant), "convert", str(src), "-o", str(out), "--quiet", *args],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p


def report_of(stquant, src, tmp, quant, *args):
    convert(stquant, src, tmp / f"out-{quant}", "-q", quant, "--report", str(tmp / f"{quant}.json"), *args)
    return json.loads((tmp / f"{quant}.json").read_text())


def mlx_errors(src_dir: Path, out_dir: Path) -> dict:
    """name -> (relative RMSE, max abs error) of mx.dequantize (float32) of the output's fields
    against the source tensor, in float64."""
    config = json.loads((out_dir / "config.json").read_text())["quantization"]
    source = {}
    for f in sorted(src_dir.glob("*.safetensors")):
        source.update(mx.load(str(f)))
    out = {}
    for f in sorted(out_dir.glob("model*.safetensors")):
        out.update(mx.load(str(f)))
    errors = {}
    for name in out:
        if not name.endswith(".scales"):
            continue
        base = name[: -len(".scales")]
        q = config.get(base, config)
        deq = mx.dequantize(out[base + ".weight"], out[name], out.get(base + ".biases"), group_size=q["group_size"],
                            bits=q["bits"], mode=q.get("mode", "affine"), dtype=mx.float32)
        got = np.array(deq, dtype=np.float64)
        want = np.array(source[base + ".weight"].astype(mx.float32), dtype=np.float64)
        err = got - want
        errors[base + ".weight"] = (np.sqrt((err ** 2).sum() / (want ** 2).sum()), np.abs(err).max())
    return errors


@pytest.fixture(scope="module")
def tinylm(shared_dir):
    return shared_dir / "models" / "tinylm-llama"


@pytest.fixture(scope="module")
def reports(stquant, tinylm, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reports")
    return tmp, {quant: report_of(stquant, tinylm, tmp, quant) for quant in TYPES}


@pytest.mark.parametrize("quant", TYPES)
def test_report_lists_every_quantized_tensor_with_mlx_s_error(tinylm, reports, quant):
    tmp, by_type = reports
    report = by_type[quant]
    want = mlx_errors(tinylm, tmp / f"out-{quant}")
    got = {t["name"]: t for t in report["tensors"]}
    assert sorted(got) == sorted(want)
    for name, (rel_rmse, max_abs) in want.items():
        assert got[name]["type"] == quant
        assert got[name]["relative_rmse"] == pytest.approx(rel_rmse, rel=1e-9), name
        assert got[name]["max_abs_error"] == pytest.approx(max_abs, rel=1e-6), name
    bits, group = {"mxfp4": (4, 32), "mxfp8": (8, 32), "nvfp4": (4, 16)}.get(quant) or (int(quant[3:]), 64)
    scale_bits = 32 if quant.startswith("int") else 8  # bf16 scale + bias, or one E8M0/E4M3 byte
    assert report["overall"]["bits_per_weight"] == pytest.approx(bits + scale_bits / group)
    assert report["overall"]["tensors"] == len(want)


def test_overall_error_follows_the_perplexity_ordering(reports):
    # tinylm-llama's perplexity after RTN (../shared/models/README.md): bf16 8.018, int8 8.028,
    # mxfp8 8.040, int4 8.304, nvfp4 8.364, mxfp4 8.606, int3 9.861, int2 32.05.
    _, by_type = reports
    by_perplexity = ["int8", "mxfp8", "int4", "nvfp4", "mxfp4", "int3", "int2"]
    errors = [by_type[q]["overall"]["relative_rmse"] for q in by_perplexity]
    assert errors == sorted(errors) and len(set(errors)) == len(errors), dict(zip(by_perplexity, errors))


def test_report_is_deterministic_whatever_the_threads(stquant, tinylm, tmp_path):
    for jobs in ("1", "2"):
        (tmp_path / jobs).mkdir()
        report_of(stquant, tinylm, tmp_path / jobs, "nvfp4", "-j", jobs)
    assert (tmp_path / "1" / "nvfp4.json").read_bytes() == (tmp_path / "2" / "nvfp4.json").read_bytes()


def bf16_bytes(values: np.ndarray) -> bytes:
    return values.astype(ml_dtypes.bfloat16).tobytes()


def test_underflowing_nvfp4_blocks_are_counted_and_flagged(stquant, tmp_path):
    """nvfp4 blocks whose values are below what E4M3's smallest scale can represent dequantize to
    zeros: the tensor is flagged (relative RMSE 1, far above the median) and its zeroed blocks
    counted; in int4 (a bf16 scale) the same tensor is as good as the others."""
    rng = np.random.default_rng(7)
    src = tmp_path / "src"
    src.mkdir()
    shape = (256, 512)
    tensors = {f"model.layers.{i}.mlp.up_proj.weight": rng.standard_normal(shape).astype(np.float32) * 0.02
               for i in range(6)}
    tiny = "model.layers.6.mlp.up_proj.weight"
    tensors[tiny] = rng.standard_normal(shape).astype(np.float32) * 1e-5
    write_st(src / "model.safetensors", {n: ("BF16", v.shape, bf16_bytes(v)) for n, v in tensors.items()})
    (src / "config.json").write_text(json.dumps({"model_type": "llama", "torch_dtype": "bfloat16"}))
    for quant in ("int4", "nvfp4"):
        p = subprocess.run([str(stquant), "convert", str(src), "-o", str(tmp_path / quant), "-q", quant, "--quiet",
                            "--report", str(tmp_path / f"{quant}.json"), "-v"], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        report = json.loads((tmp_path / f"{quant}.json").read_text())
        by_name = {t["name"]: t for t in report["tensors"]}
        flagged = [t["name"] for t in report["tensors"] if t["flagged"]]
        assert all(by_name[f"model.layers.{i}.mlp.up_proj.weight"]["zeroed_group_share"] == 0.0 for i in range(6))
        if quant == "nvfp4":
            assert flagged == [tiny]
            assert by_name[tiny]["zeroed_group_share"] == 1.0
            assert by_name[tiny]["relative_rmse"] == pytest.approx(1.0)
            assert tiny in p.stdout  # the --verbose table names it
        else:
            assert flagged == []
            assert by_name[tiny]["zeroed_group_share"] == 0.0
            assert "no tensor above" in p.stdout


def test_report_of_the_ollama_layout_and_of_an_unquantized_conversion(stquant, tinylm, tmp_path):
    p = subprocess.run([str(stquant), "convert", str(tinylm), "--layout", "ollama", "--name", "t", "--models-dir",
                        str(tmp_path / "store"), "-q", "int4", "--quiet", "--report", str(tmp_path / "o.json")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    report = json.loads((tmp_path / "o.json").read_text())
    names = [t["name"] for t in report["tensors"]]
    assert names == sorted(names) and len(names) > 0
    # ollama's policy: some tensors promoted to the 8-bit type of the family
    assert {t["type"] for t in report["tensors"]} <= {"int4", "int8"}
    convert(stquant, tinylm, tmp_path / "float", "--report", str(tmp_path / "f.json"))
    assert json.loads((tmp_path / "f.json").read_text())["tensors"] == []
