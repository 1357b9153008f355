"""compressed-tensors fixtures written by compressed-tensors' own compressors (issue 6, Tests):
the layout is the real one, and the reference values are the library's own decompression.

Skipped unless torch and compressed-tensors are installed (tests/python/requirements-compressors.txt;
scripts/setup does not install them by default: PyPI's torch for Linux x86_64 brings about 3 GB of
CUDA libraries, see docs/prequant-import.md). test_prequant_import.py covers the same formats on
every run with fixtures written by hand from the formats' documentation.

Each test imports the fixture with `stquant convert` into the mlx layout and the ollama layout, and
checks that MLX's dequantization of our output, rounded to the bfloat16 that compressed-tensors
decompresses to, equals compressed-tensors' decompressed weight element for element.
"""
import json

import ml_dtypes
import mlx.core as mx
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("compressed_tensors")

import ct_real_fixtures as ct  # noqa: E402  (imports torch)
from test_prequant_import import (  # noqa: E402
    check_layer_blob, generate_works, import_ollama, load_output, nvfp4_blob_values, read_blobs, read_raw, run)

BF16 = ml_dtypes.bfloat16


def ref_bf16(t):
    assert str(t.dtype) == "torch.bfloat16"
    return t.float().numpy().astype(BF16)


def affine_f32(w, s, b, group):
    """MLX's affine dequantize in float32 (code * scale + bias: exact for these codes and scales)."""
    return np.array(mx.dequantize(w, s.astype(mx.float32), b.astype(mx.float32), group_size=group, bits=4,
                                  dtype=mx.float32))


def build(stquant, shared_dir, tmp_path, fixture, kind, which=ct.LINEAR, coarse=False, name="src"):
    ref = ct.build(shared_dir / "fixtures/hf" / fixture, tmp_path / name, kind, which, coarse)
    r = run(stquant, "inspect", tmp_path / name, "--json")
    assert json.loads(r.stdout)["source_kind"] == "compressed-tensors"
    return ref


def check_int4_mlx(stquant, src, out, ref):
    run(stquant, "convert", src, "-o", out, "--quiet")
    weights = load_output(out)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"] == {"group_size": 64, "bits": 4, "mode": "affine"}
    assert not any(k.endswith(("weight_shape", "weight_packed", "weight_zero_point")) for k in weights)
    for base, want in ref.items():
        w, s, b = weights[base + ".weight"], weights[base + ".scales"], weights[base + ".biases"]
        assert w.dtype == mx.uint32 and s.dtype == mx.bfloat16 and b.dtype == mx.bfloat16
        np.testing.assert_array_equal(affine_f32(w, s, b, 64).astype(BF16), ref_bf16(want), err_msg=base)
    generate_works(out)


def check_int4_ollama(stquant, src, store, ref):
    import_ollama(stquant, src, store)
    _, blobs, tensors, quant, raw = read_blobs(store)
    assert not any(k.endswith(("weight_shape", "weight_packed", "weight_zero_point")) for k in raw)
    for base, want in ref.items():
        check_layer_blob(blobs, base, "int4", 64, [".bias"])
        w, s, b = tensors[base + ".weight"], tensors[base + ".weight_scale"], tensors[base + ".weight_qbias"]
        np.testing.assert_array_equal(affine_f32(w, s, b, 64).astype(BF16), ref_bf16(want), err_msg=base)


def test_real_int4_symmetric(stquant, shared_dir, tmp_path):
    ref = build(stquant, shared_dir, tmp_path, "tiny-llama", "int4-sym")
    assert len(ref) == 2 * 7
    check_int4_mlx(stquant, tmp_path / "src", tmp_path / "out", ref)
    check_int4_ollama(stquant, tmp_path / "src", tmp_path / "store", ref)
    # Symmetric int4 is affine with bias -8 * scale, exactly.
    out = load_output(tmp_path / "out")
    base = "model.layers.1.mlp.down_proj"
    np.testing.assert_array_equal(np.array(out[base + ".biases"].astype(mx.float32)),
                                  -8 * np.array(out[base + ".scales"].astype(mx.float32)))


def test_real_int4_asymmetric(stquant, shared_dir, tmp_path):
    # Scales with 4 significant bits: every bias -(8 + zp) * scale is exact in bf16: lossless.
    ref = build(stquant, shared_dir, tmp_path, "tiny-llama", "int4-asym", coarse=True)
    src = read_raw(tmp_path / "src/model.safetensors")
    assert src["model.layers.0.self_attn.q_proj.weight_zero_point"][:2] == ("I32", (256 // 8, 256 // 64))
    check_int4_mlx(stquant, tmp_path / "src", tmp_path / "out", ref)
    check_int4_ollama(stquant, tmp_path / "src", tmp_path / "store", ref)
    # The library's own min-max scales: their biases need more bits than bf16 has: refused in both
    # layouts, naming the layer.
    build(stquant, shared_dir, tmp_path, "tiny-llama", "int4-asym", name="src2")
    r = run(stquant, "convert", tmp_path / "src2", "-o", tmp_path / "out2", ok=False)
    assert r.returncode == 2 and "not exactly representable in BF16" in r.stderr and "layer 'model.layers." in r.stderr
    r = import_ollama(stquant, tmp_path / "src2", tmp_path / "store2", ok=False)
    assert r.returncode == 2 and "not exactly representable in BF16" in r.stderr


def test_real_nvfp4_dense(stquant, shared_dir, tmp_path):
    ref = build(stquant, shared_dir, tmp_path, "tiny-llama", "nvfp4")
    src = read_raw(tmp_path / "src/model.safetensors")
    # mlx layout: a dense layer's real global scale cannot be folded into the E4M3 block scales and
    # mlx's QuantizedLinear has none: refused.
    r = run(stquant, "convert", tmp_path / "src", "-o", tmp_path / "out", ok=False)
    assert r.returncode == 2 and "cannot be folded exactly" in r.stderr and "weight_global_scale" in r.stderr
    # ollama layout: the global scale is kept (1 / weight_global_scale).
    import_ollama(stquant, tmp_path / "src", tmp_path / "store")
    _, blobs, tensors, quant, raw = read_blobs(tmp_path / "store")
    assert not any(k.endswith(("weight_packed", "weight_global_scale")) for k in raw)
    for base, want in ref.items():
        check_layer_blob(blobs, base, "nvfp4", 16, [".global_scale"])
        assert raw[base + ".weight"][1] == src[base + ".weight_packed"][2]  # the packed bytes, relabelled
        assert raw[base + ".weight.scale"] == ("U8", src[base + ".weight_scale"][2])
        G = np.frombuffer(src[base + ".weight_global_scale"][2], np.float32)[0]
        assert tensors[base + ".weight.global_scale"].item() == np.float32(1) / G
        np.testing.assert_array_equal(nvfp4_blob_values(tensors, base).astype(BF16), ref_bf16(want), err_msg=base)


def test_real_nvfp4_moe_experts(stquant, shared_dir, tmp_path):
    ref = build(stquant, shared_dir, tmp_path, "tiny-qwen3-moe", "nvfp4", which=ct.EXPERTS)
    assert len(ref) == 2 * 3 * 8
    # mlx layout: stacked experts keep their global scales (MLX's SwitchLinear has one).
    run(stquant, "convert", tmp_path / "src", "-o", tmp_path / "out", "--quiet")
    out = load_output(tmp_path / "out")
    assert not any("weight_global_scale" in k for k in out)
    for layer in range(2):
        for proj in ("gate_proj", "up_proj", "down_proj"):
            p = f"model.layers.{layer}.mlp.switch_mlp.{proj}"
            w, s, g = out[p + ".weight"], out[p + ".scales"], out[p + ".global_scale"]
            for e in range(8):
                got = np.array(mx.dequantize(w[e], s[e], group_size=16, bits=4, mode="nvfp4", global_scale=g[e],
                                             dtype=mx.float32))
                base = f"model.layers.{layer}.mlp.experts.{e}.{proj}"
                np.testing.assert_array_equal(got.astype(BF16), ref_bf16(ref[base]), err_msg=base)
    generate_works(tmp_path / "out", global_scale=True)
    # ollama layout: per expert, each with its global scale.
    import_ollama(stquant, tmp_path / "src", tmp_path / "store")
    _, blobs, tensors, quant, raw = read_blobs(tmp_path / "store")
    for base, want in ref.items():
        check_layer_blob(blobs, base, "nvfp4", 16, [".global_scale"])
        np.testing.assert_array_equal(nvfp4_blob_values(tensors, base).astype(BF16), ref_bf16(want), err_msg=base)
