"""compressed-tensors fixtures written by compressed-tensors' own compressors (issue 6, Tests):
the layout is the real one, and the reference values are the library's own decompression.

Two sources per test:
- "committed": tests/python/fixtures/compressed_tensors/<case>, written once by
  `python tests/python/ct_real_fixtures.py --write-committed ...` (see the README there) with
  compressed-tensors itself, with reference.safetensors holding its decompressed weights. Needs no
  torch: runs on every run (CI included).
- "library": the full-size shared tiny models compressed now by compressed-tensors. Skipped unless
  torch and compressed-tensors are installed (tests/python/requirements-compressors.txt; scripts/setup
  does not install them by default: PyPI's torch for Linux x86_64 brings about 3 GB of CUDA
  libraries, see README, "Already-quantized sources"). With them,
  test_committed_fixtures_are_current also regenerates the committed fixtures and requires them
  byte for byte, so that a change of the library's layout or arithmetic is seen.
test_prequant_import.py covers the same formats with fixtures written by hand from the formats'
documentation.

Each test imports the fixture with `stquant convert` into the mlx layout and the ollama layout, and
checks that MLX's dequantization of our output, rounded to the bfloat16 that compressed-tensors
decompresses to, equals compressed-tensors' decompressed weight element for element.
"""
import filecmp
import importlib.util
import json
from pathlib import Path

import ml_dtypes
import mlx.core as mx
import numpy as np
import pytest

from test_prequant_import import (
    check_layer_blob, generate_works, import_ollama, load_output, nvfp4_blob_values, read_blobs, read_raw, run)

BF16 = ml_dtypes.bfloat16
COMMITTED = Path(__file__).resolve().parent / "fixtures" / "compressed_tensors"
HAVE_COMPRESSORS = all(importlib.util.find_spec(m) is not None for m in ("torch", "compressed_tensors"))
NEEDS_COMPRESSORS = "needs torch + compressed-tensors (tests/python/requirements-compressors.txt)"


def committed_reference(case) -> dict:
    """{module name: bf16 numpy array} from the case's reference.safetensors."""
    ref = {}
    for name, (dtype, shape, data) in read_raw(COMMITTED / case / "reference.safetensors").items():
        assert dtype == "BF16" and name.endswith(".weight"), name
        ref[name[: -len(".weight")]] = np.frombuffer(data, np.uint16).view(BF16).reshape(shape)
    return ref


@pytest.fixture(params=["committed", "library"])
def source(request, stquant, shared_dir, tmp_path):
    """source(case, name="src") -> (checkpoint folder, {module name: reference bf16 numpy array}),
    the reference empty for a case that has none."""
    def get(case, name="src"):
        if request.param == "committed":
            src = COMMITTED / case
            ref = committed_reference(case) if (src / "reference.safetensors").exists() else {}
        else:
            if not HAVE_COMPRESSORS:
                pytest.skip(NEEDS_COMPRESSORS)
            import ct_real_fixtures as ct  # imports torch

            model, kind, which, coarse, _ = ct.CASES[case]
            src = tmp_path / name
            ref = {k: ref_bf16(v) for k, v in ct.build(shared_dir / "fixtures/hf" / model, src, kind, which,
                                                        coarse).items()}
        r = run(stquant, "inspect", src, "--json")
        assert json.loads(r.stdout)["source_kind"] == "compressed-tensors"
        return src, ref
    return get


def ref_bf16(t):
    assert str(t.dtype) == "torch.bfloat16"
    return t.float().numpy().astype(BF16)


def config_of(src):
    return json.loads((src / "config.json").read_text())


def affine_f32(w, s, b, group):
    """MLX's affine dequantize in float32 (code * scale + bias: exact for these codes and scales)."""
    return np.array(mx.dequantize(w, s.astype(mx.float32), b.astype(mx.float32), group_size=group, bits=4,
                                  dtype=mx.float32))


def check_int4_mlx(stquant, src, out, ref):
    run(stquant, "convert", src, "-o", out, "--quiet")
    weights = load_output(out)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"] == {"group_size": 64, "bits": 4, "mode": "affine"}
    assert not any(k.endswith(("weight_shape", "weight_packed", "weight_zero_point")) for k in weights)
    for base, want in ref.items():
        w, s, b = weights[base + ".weight"], weights[base + ".scales"], weights[base + ".biases"]
        assert w.dtype == mx.uint32 and s.dtype == mx.bfloat16 and b.dtype == mx.bfloat16
        np.testing.assert_array_equal(affine_f32(w, s, b, 64).astype(BF16), want, err_msg=base)
    generate_works(out)


def check_int4_ollama(stquant, src, store, ref):
    import_ollama(stquant, src, store)
    _, blobs, tensors, quant, raw = read_blobs(store)
    assert not any(k.endswith(("weight_shape", "weight_packed", "weight_zero_point")) for k in raw)
    for base, want in ref.items():
        check_layer_blob(blobs, base, "int4", 64, [".bias"])
        w, s, b = tensors[base + ".weight"], tensors[base + ".weight_scale"], tensors[base + ".weight_qbias"]
        np.testing.assert_array_equal(affine_f32(w, s, b, 64).astype(BF16), want, err_msg=base)


def test_real_int4_symmetric(stquant, source, tmp_path):
    src, ref = source("int4-sym")
    layers = config_of(src)["num_hidden_layers"]
    assert len(ref) == layers * 7
    check_int4_mlx(stquant, src, tmp_path / "out", ref)
    check_int4_ollama(stquant, src, tmp_path / "store", ref)
    # Symmetric int4 is affine with bias -8 * scale, exactly.
    out = load_output(tmp_path / "out")
    base = f"model.layers.{layers - 1}.mlp.down_proj"
    np.testing.assert_array_equal(np.array(out[base + ".biases"].astype(mx.float32)),
                                  -8 * np.array(out[base + ".scales"].astype(mx.float32)))


def test_real_int4_asymmetric(stquant, source, tmp_path):
    # Scales with 4 significant bits: every bias -(8 + zp) * scale is exact in bf16: lossless.
    src, ref = source("int4-asym")
    assert len(ref) == config_of(src)["num_hidden_layers"] * 7
    raw = read_raw(src / "model.safetensors")
    rows, packed_cols = raw["model.layers.0.self_attn.q_proj.weight_packed"][1]
    assert raw["model.layers.0.self_attn.q_proj.weight_zero_point"][:2] == ("I32", (rows // 8, packed_cols * 8 // 64))
    check_int4_mlx(stquant, src, tmp_path / "out", ref)
    check_int4_ollama(stquant, src, tmp_path / "store", ref)
    # The library's own min-max scales: their biases need more bits than bf16 has: refused in both
    # layouts, naming the layer.
    src2, _ = source("int4-asym-minmax", name="src2")
    r = run(stquant, "convert", src2, "-o", tmp_path / "out2", ok=False)
    assert r.returncode == 2 and "not exactly representable in BF16" in r.stderr and "layer 'model.layers." in r.stderr
    r = import_ollama(stquant, src2, tmp_path / "store2", ok=False)
    assert r.returncode == 2 and "not exactly representable in BF16" in r.stderr


def test_real_nvfp4_dense(stquant, source, tmp_path):
    src_dir, ref = source("nvfp4-dense")
    assert len(ref) == config_of(src_dir)["num_hidden_layers"] * 7
    src = read_raw(src_dir / "model.safetensors")
    # mlx layout: a dense layer's real global scale cannot be folded into the E4M3 block scales and
    # mlx's QuantizedLinear has none: refused.
    r = run(stquant, "convert", src_dir, "-o", tmp_path / "out", ok=False)
    assert r.returncode == 2 and "cannot be folded exactly" in r.stderr and "weight_global_scale" in r.stderr
    # ollama layout: the global scale is kept (1 / weight_global_scale).
    import_ollama(stquant, src_dir, tmp_path / "store")
    _, blobs, tensors, quant, raw = read_blobs(tmp_path / "store")
    assert not any(k.endswith(("weight_packed", "weight_global_scale")) for k in raw)
    for base, want in ref.items():
        check_layer_blob(blobs, base, "nvfp4", 16, [".global_scale"])
        assert raw[base + ".weight"][1] == src[base + ".weight_packed"][2]  # the packed bytes, relabelled
        assert raw[base + ".weight.scale"] == ("U8", src[base + ".weight_scale"][2])
        G = np.frombuffer(src[base + ".weight_global_scale"][2], np.float32)[0]
        assert tensors[base + ".weight.global_scale"].item() == np.float32(1) / G
        np.testing.assert_array_equal(nvfp4_blob_values(tensors, base).astype(BF16), want, err_msg=base)


def test_real_nvfp4_moe_experts(stquant, source, tmp_path):
    src, ref = source("nvfp4-experts")
    config = config_of(src)
    layers, experts = config["num_hidden_layers"], config["num_local_experts"]
    assert layers >= 2 and experts >= 2 and len(ref) == layers * 3 * experts
    # mlx layout: stacked experts keep their global scales (MLX's SwitchLinear has one).
    run(stquant, "convert", src, "-o", tmp_path / "out", "--quiet")
    out = load_output(tmp_path / "out")
    assert not any("weight_global_scale" in k for k in out)
    for layer in range(layers):
        for proj in ("gate_proj", "up_proj", "down_proj"):
            p = f"model.layers.{layer}.mlp.switch_mlp.{proj}"
            w, s, g = out[p + ".weight"], out[p + ".scales"], out[p + ".global_scale"]
            assert w.shape[0] == experts
            for e in range(experts):
                got = np.array(mx.dequantize(w[e], s[e], group_size=16, bits=4, mode="nvfp4", global_scale=g[e],
                                             dtype=mx.float32))
                base = f"model.layers.{layer}.mlp.experts.{e}.{proj}"
                np.testing.assert_array_equal(got.astype(BF16), ref[base], err_msg=base)
    generate_works(tmp_path / "out", global_scale=True)
    # ollama layout: per expert, each with its global scale.
    import_ollama(stquant, src, tmp_path / "store")
    _, blobs, tensors, quant, raw = read_blobs(tmp_path / "store")
    for base, want in ref.items():
        check_layer_blob(blobs, base, "nvfp4", 16, [".global_scale"])
        np.testing.assert_array_equal(nvfp4_blob_values(tensors, base).astype(BF16), want, err_msg=base)


def test_committed_fixtures_have_every_case():
    cases = sorted(p.name for p in COMMITTED.iterdir() if p.is_dir())
    assert cases == sorted(["nvfp4-dense", "nvfp4-experts", "int4-sym", "int4-asym", "int4-asym-minmax"])
    for case in cases:
        assert (COMMITTED / case / "model.safetensors").is_file(), case
        assert (COMMITTED / case / "reference.safetensors").is_file() == (case != "int4-asym-minmax"), case


@pytest.mark.skipif(not HAVE_COMPRESSORS, reason=NEEDS_COMPRESSORS)
def test_committed_fixtures_are_current(shared_dir, tmp_path):
    """The committed fixtures are, byte for byte, what the installed compressed-tensors writes now."""
    import ct_real_fixtures as ct  # imports torch

    ct.write_committed(shared_dir, tmp_path)
    assert sorted(ct.CASES) == sorted(p.name for p in COMMITTED.iterdir() if p.is_dir())
    for case in ct.CASES:
        got = sorted(p.name for p in (tmp_path / case).iterdir())
        assert got == sorted(p.name for p in (COMMITTED / case).iterdir()), case
        _, mismatch, errors = filecmp.cmpfiles(tmp_path / case, COMMITTED / case, got, shallow=False)
        assert not mismatch and not errors, (
            f"{case}: {mismatch + errors} differ from what {ct.versions()} writes: regenerate with "
            f"`python tests/python/ct_real_fixtures.py --write-committed {COMMITTED}` and update the README there")
