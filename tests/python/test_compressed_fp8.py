"""compressed-tensors float-quantized FP8 sources (issue 16 item 5): llm-compressor's FP8_DYNAMIC
(per-channel scales) and W8A8-FP8 (per-tensor scales, static input_scale) checkpoints, written by
hand from compressed-tensors' documented layout:

  <layer>.weight        F8_E4M3 [out, in]      (NaiveQuantizationCompressor / float-quantized)
  <layer>.weight_scale  BF16/F32/F16 [out, 1]  (strategy channel), [1] (tensor),
                        [out, in / group_size] (group), [ceil(out/bh), ceil(in/bw)] (block)
  <layer>.input_scale   F32 [1]                (static activation scale, W8A8-FP8 only)
  config quantization_config: quant_method compressed-tensors, format float-quantized (or
  mixed-precision), config_groups {weights: num_bits 8, type float, strategy ...}

compressed-tensors decompresses as x_q.to(scale.dtype) * scale, i.e. E4M3 x scale rounded to the
scale (= model) dtype. stquant decodes every weight to exactly that - checked here with numpy and
ml_dtypes, independently of stquant's own code - and then quantizes it like a float source (-q
TYPE; the ollama layout's default mxfp8), byte-exact with mx.quantize of the decoded weights.
"""
import json

import ml_dtypes
import mlx.core as mx
import numpy as np
import pytest

from test_ollama_store import TENSOR, load_model, manifest_path
from test_prequant_import import copy_model, is_linear, load_output, load_source, read_raw, run, st_entry, write_st

F8 = ml_dtypes.float8_e4m3fn
NP_DTYPE = {"BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32}


def fp8_codes(w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """E4M3 codes of w / scale (broadcast), saturated to +-448 as compressed-tensors' quantize."""
    return np.clip(w / scale.astype(np.float32), -448, 448).astype(F8)


def group_config(strategy: str, **extra) -> dict:
    return {"targets": ["Linear"], "format": "float-quantized",
            "weights": {"num_bits": 8, "type": "float", "symmetric": True, "dynamic": False, "strategy": strategy,
                        **extra},
            "input_activations": {"num_bits": 8, "type": "float", "symmetric": True, "dynamic": True,
                                  "strategy": "token"}}


def build_fp8(shared_dir, dst, strategy="channel", scale_dtype="BF16", model_dtype=None, select=is_linear,
              input_scale=False, config=None, scale_shape=None):
    """tiny-llama with its linear weights as compressed-tensors FP8. Returns layer -> the decoded
    weights compressed-tensors' decompress gives (numpy, in the model dtype)."""
    fixture = shared_dir / "fixtures/hf/tiny-llama"
    src = load_source(fixture)
    out_dtype = NP_DTYPE[{"float16": "F16", "float32": "F32"}.get(model_dtype, "BF16")]
    tensors, ref = {}, {}
    for name, (dt, shape, raw, values) in src.items():
        if not select(name):
            tensors[name] = (dt, shape, raw)
            continue
        amax = np.max(np.abs(values), axis=1, keepdims=True) if strategy == "channel" else np.max(np.abs(values))
        if strategy == "group":
            amax = np.max(np.abs(values.reshape(values.shape[0], -1, 64)), axis=2)
        scale = (np.maximum(amax, 1e-6) / 448).astype(NP_DTYPE[scale_dtype])
        full = np.repeat(scale, 64, axis=1) if strategy == "group" else scale
        codes = fp8_codes(values, full)
        base = name[: -len(".weight")]
        tensors[name] = st_entry("F8_E4M3", codes)
        stored = scale.reshape(scale_shape if scale_shape is not None else (scale.shape if strategy != "tensor" else (1,)))
        tensors[base + ".weight_scale"] = st_entry(scale_dtype, stored)
        if input_scale:
            tensors[base + ".input_scale"] = st_entry("F32", np.array([0.05], np.float32))
        # x_q.to(float32) * scale, rounded once to the model dtype (ml_dtypes rounds to nearest even).
        ref[base] = (codes.astype(np.float32) * full.astype(np.float32)).astype(out_dtype)
    qc = config or {"quant_method": "compressed-tensors", "format": "float-quantized",
                    "quantization_status": "compressed", "config_groups": {"group_0": group_config(
                        strategy, **({"group_size": 64} if strategy == "group" else {}))},
                    "ignore": ["lm_head"]}
    update = {"quantization_config": qc}
    if model_dtype:
        update["dtype"] = model_dtype
    copy_model(fixture, dst, tensors, update)
    return ref


def raw_values(raw, name, dtype):
    dt, shape, data = raw[name]
    return np.frombuffer(data, NP_DTYPE[dt]).reshape(shape), dt


@pytest.mark.parametrize("strategy,scale_dtype,model_dtype", [
    ("channel", "BF16", None),     # FP8_DYNAMIC
    ("tensor", "F32", None),       # W8A8-FP8 (static per-tensor)
    ("channel", "F16", "float16"),  # an F16 model: decoded straight to F16
    ("group", "BF16", None),       # W8A16-FP8 with groups of 64
])
def test_decoded_weights_equal_e4m3_times_scale(stquant, shared_dir, tmp_path, strategy, scale_dtype, model_dtype):
    ref = build_fp8(shared_dir, tmp_path / "src", strategy, scale_dtype, model_dtype, input_scale=strategy == "tensor")
    report = json.loads(run(stquant, "inspect", tmp_path / "src", "--json").stdout)
    assert report["source_kind"] == "compressed-tensors-fp8"
    assert strategy in report["source_detail"]
    run(stquant, "convert", tmp_path / "src", "-o", tmp_path / "out", "--quiet")
    raw = read_raw(tmp_path / "out/model.safetensors")
    assert not any(k.endswith(("weight_scale", "input_scale")) for k in raw)
    for base, want in ref.items():
        got, dt = raw_values(raw, base + ".weight", want.dtype)
        assert got.dtype == want.dtype, (base, dt)
        np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8), err_msg=base)
    config = json.loads((tmp_path / "out/config.json").read_text())
    assert "quantization_config" not in config and "quantization" not in config
    from mlx_lm import generate, load
    model, tokenizer = load(str(tmp_path / "out"))
    assert isinstance(generate(model, tokenizer, prompt="hello", max_tokens=3, verbose=False), str)


@pytest.mark.parametrize("qtype,mode,bits,group", [("int4", "affine", 4, 64), ("mxfp8", "mxfp8", 8, 32)])
def test_quantized_like_a_float_source(stquant, shared_dir, tmp_path, qtype, mode, bits, group):
    ref = build_fp8(shared_dir, tmp_path / "src")
    run(stquant, "convert", tmp_path / "src", "-o", tmp_path / "out", "-q", qtype, "--quiet")
    out = load_output(tmp_path / "out")
    config = json.loads((tmp_path / "out/config.json").read_text())
    assert config["quantization"]["mode"] == mode and config["quantization"]["bits"] == bits
    for base, want in ref.items():
        expect = mx.quantize(mx.array(want), group_size=group, bits=bits, mode=mode)
        for got, exp in zip([out[base + ".weight"], out[base + ".scales"]] + ([out[base + ".biases"]] if mode == "affine" else []),
                            expect):
            np.testing.assert_array_equal(np.array(got.view(mx.uint8) if got.dtype == mx.bfloat16 else got),
                                          np.array(exp.view(mx.uint8) if exp.dtype == mx.bfloat16 else exp))


def test_ollama_layout_defaults_to_mxfp8(stquant, shared_dir, tmp_path):
    ref = build_fp8(shared_dir, tmp_path / "src", "tensor", "F32", input_scale=True)
    store = tmp_path / "store"
    run(stquant, "convert", tmp_path / "src", "--layout", "ollama", "--models-dir", store, "--name", "x", "--quiet")
    manifest, tensors, quant, raw = load_model(store, "x")
    assert not any(k.endswith((".input_scale", ".weight_scale")) for k in raw)
    config = json.loads((store / "blobs" / ("sha256-" + manifest["config"]["digest"][7:])).read_text())
    assert config["file_type"] == "mxfp8"
    # Every FP8 weight becomes mxfp8 (ollama's block-FP8 default), byte-exact with mx.quantize of
    # its decoded values.
    assert set(quant) == {base + ".weight" for base in ref}
    for base, want in ref.items():
        name = base + ".weight"
        assert quant[name] == ("mxfp8", 32)
        expect = mx.quantize(mx.array(want), group_size=32, bits=8, mode="mxfp8")
        np.testing.assert_array_equal(np.array(tensors[name]), np.array(expect[0]))
        np.testing.assert_array_equal(np.array(tensors[name + "_scale"]), np.array(expect[1]))


def test_mixed_precision_container_of_float_groups(stquant, shared_dir, tmp_path):
    """format mixed-precision: attention per tensor, MLP per channel; each layer decoded with the
    group its scale's shape fits."""
    attention = lambda n: is_linear(n) and "self_attn" in n  # noqa: E731
    mlp = lambda n: is_linear(n) and "mlp" in n  # noqa: E731
    qc = {"quant_method": "compressed-tensors", "format": "mixed-precision",
          "config_groups": {"group_0": {**group_config("tensor"), "targets": ["re:.*self_attn.*"]},
                            "group_1": {**group_config("channel"), "targets": ["re:.*mlp.*"]}}}
    ref_attention = build_fp8(shared_dir, tmp_path / "a", "tensor", "F32", select=attention, config=qc)
    ref_mlp = build_fp8(shared_dir, tmp_path / "m", "channel", "BF16", select=mlp, config=qc)
    # One checkpoint: the attention layers of one, the MLP layers of the other.
    tensors = {**read_raw(tmp_path / "m/model.safetensors")}
    tensors.update({k: v for k, v in read_raw(tmp_path / "a/model.safetensors").items() if "self_attn" in k})
    write_st(tmp_path / "m/model.safetensors", tensors)
    report = json.loads(run(stquant, "inspect", tmp_path / "m", "--json").stdout)
    assert report["source_kind"] == "compressed-tensors-fp8" and "channel, tensor" in report["source_detail"]
    run(stquant, "convert", tmp_path / "m", "-o", tmp_path / "out", "--quiet")
    raw = read_raw(tmp_path / "out/model.safetensors")
    for base, want in {**ref_attention, **ref_mlp}.items():
        got, _ = raw_values(raw, base + ".weight", want.dtype)
        np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16), err_msg=base)


def test_refusals_name_the_group_or_tensor(stquant, shared_dir, tmp_path):
    # 4-bit floats under float-quantized: not an FP8 checkpoint stquant decodes.
    qc = {"quant_method": "compressed-tensors", "format": "float-quantized",
          "config_groups": {"g": {**group_config("channel"), "weights": {"num_bits": 4, "type": "float",
                                                                          "strategy": "channel"}}}}
    build_fp8(shared_dir, tmp_path / "s1", config=qc)
    r = run(stquant, "convert", tmp_path / "s1", "-o", tmp_path / "o1", ok=False)
    assert r.returncode == 2 and "group 'g'" in r.stderr and "num_bits 4" in r.stderr
    assert not (tmp_path / "o1").exists()
    # A per-channel config with scales of another shape.
    build_fp8(shared_dir, tmp_path / "s2", "channel", scale_shape=None,
              select=lambda n: n == "model.layers.0.mlp.down_proj.weight")
    raw = read_raw(tmp_path / "s2/model.safetensors")
    dt, shape, data = raw["model.layers.0.mlp.down_proj.weight_scale"]
    raw["model.layers.0.mlp.down_proj.weight_scale"] = (dt, (1, shape[0]), data)
    write_st(tmp_path / "s2/model.safetensors", raw)
    r = run(stquant, "convert", tmp_path / "s2", "-o", tmp_path / "o2", ok=False)
    assert r.returncode == 2 and "model.layers.0.mlp.down_proj.weight" in r.stderr
    assert "unexpected fp8 scale" in r.stderr and "strategy channel" in r.stderr
    assert not (tmp_path / "o2").exists()
    # The ollama layout refuses -q for nothing here: -q int4 quantizes the decoded weights.
    store = tmp_path / "store"
    build_fp8(shared_dir, tmp_path / "s3")
    run(stquant, "convert", tmp_path / "s3", "--layout", "ollama", "--models-dir", store, "--name", "y", "-q", "int4",
        "--quiet")
    assert manifest_path(store, "y").is_file()


def build_fp8_beside_packed(shared_dir, dst, mlp: str):
    """format mixed-precision: attention layers float-quantized FP8 (per channel), MLP layers
    packed (mlp "int4": pack-quantized int4 group 64; "nvfp4": nvfp4-pack-quantized). Returns
    (FP8 layer -> decoded weights, MLP layer -> exact values)."""
    attention = lambda n: is_linear(n) and "self_attn" in n  # noqa: E731
    packed_group = ({"targets": ["re:.*mlp.*"], "format": "pack-quantized",
                     "weights": {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 64}}
                    if mlp == "int4" else
                    {"targets": ["re:.*mlp.*"], "format": "nvfp4-pack-quantized",
                     "weights": {"num_bits": 4, "type": "float", "symmetric": True, "strategy": "tensor_group",
                                 "group_size": 16}})
    qc = {"quant_method": "compressed-tensors", "format": "mixed-precision", "ignore": ["lm_head"],
          "config_groups": {"group_0": {**group_config("channel"), "targets": ["re:.*self_attn.*"]},
                            "group_1": packed_group}}
    ref_fp8 = build_fp8(shared_dir, dst, "channel", "BF16", select=attention, config=qc)
    from test_prequant_import import ct_int, ct_nvfp4, ct_nvfp4_dequant, pack_int32
    raw = read_raw(dst / "model.safetensors")
    ref_packed = {}
    for name, values in ((n, v) for n, (_, _, _, v) in load_source(shared_dir / "fixtures/hf/tiny-llama").items()
                         if is_linear(n) and "mlp" in n):
        base = name[: -len(".weight")]
        del raw[name]
        if mlp == "int4":
            q, s, _ = ct_int(values, 64, True, False)
            raw[base + ".weight_packed"] = st_entry("I32", pack_int32(q, 4))
            raw[base + ".weight_scale"] = st_entry("BF16", s)
            ref_packed[base] = q.astype(np.float64) * np.repeat(s.astype(np.float64), 64, axis=-1)
        else:
            packed, scales, g = ct_nvfp4(values)
            raw[base + ".weight_packed"] = st_entry("U8", packed)
            raw[base + ".weight_scale"] = st_entry("F8_E4M3", scales)
            raw[base + ".weight_global_scale"] = st_entry("F32", np.array([g], np.float32))
            ref_packed[base] = ct_nvfp4_dequant(packed, scales, g)
    write_st(dst / "model.safetensors", raw)
    return ref_fp8, ref_packed


def test_fp8_groups_beside_packed_groups(stquant, shared_dir, tmp_path):
    """A mixed-precision container of FP8 attention and packed MLP layers: the packed layers are
    imported losslessly (their codes copied), the FP8 ones decoded exactly (float layers in the mlx
    layout; mxfp8 by default in the ollama layout, as block FP8); --requantize quantizes both."""
    ref_fp8, ref_int = build_fp8_beside_packed(shared_dir, tmp_path / "src", "int4")
    report = json.loads(run(stquant, "inspect", tmp_path / "src", "--json").stdout)
    assert report["source_kind"] == "compressed-tensors"
    r = run(stquant, "convert", tmp_path / "src", "-o", tmp_path / "out", "--dry-run")
    assert "compressed-tensors mixed-precision (float-quantized FP8 (decoded), pack-quantized int4" in r.stdout
    run(stquant, "convert", tmp_path / "src", "-o", tmp_path / "out", "--quiet")
    raw = read_raw(tmp_path / "out/model.safetensors")
    for base, want in ref_fp8.items():
        got, _ = raw_values(raw, base + ".weight", want.dtype)
        np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16), err_msg=base)
        assert base + ".scales" not in raw
    out = load_output(tmp_path / "out")
    for base, want in ref_int.items():
        got = np.array(mx.dequantize(out[base + ".weight"], out[base + ".scales"].astype(mx.float32),
                                     out[base + ".biases"].astype(mx.float32), group_size=64, bits=4,
                                     dtype=mx.float32)).astype(np.float64)
        np.testing.assert_array_equal(got, want, err_msg=base)
    config = json.loads((tmp_path / "out/config.json").read_text())
    assert config["quantization"] == {"group_size": 64, "bits": 4, "mode": "affine"}
    from mlx_lm import generate, load
    model, tokenizer = load(str(tmp_path / "out"))
    assert isinstance(generate(model, tokenizer, prompt="hello", max_tokens=3, verbose=False), str)
    # --requantize: every formerly quantized layer, FP8 ones included, becomes mxfp8.
    run(stquant, "convert", tmp_path / "src", "-o", tmp_path / "rq", "-q", "mxfp8", "--requantize", "--quiet")
    out = load_output(tmp_path / "rq")
    for base, want in ref_fp8.items():
        expect = mx.quantize(mx.array(want), group_size=32, bits=8, mode="mxfp8")
        np.testing.assert_array_equal(np.array(out[base + ".weight"]), np.array(expect[0]))
        np.testing.assert_array_equal(np.array(out[base + ".scales"]), np.array(expect[1]))
    assert all(base + ".scales" in out for base in ref_int)

    # The ollama layout, with nvfp4 MLP layers.
    ref_fp8, ref_nvfp4 = build_fp8_beside_packed(shared_dir, tmp_path / "src2", "nvfp4")
    store = tmp_path / "store"
    run(stquant, "convert", tmp_path / "src2", "--layout", "ollama", "--models-dir", store, "--name", "x", "--quiet")
    manifest, tensors, quant, raw = load_model(store, "x")
    for base, want in ref_fp8.items():
        name = base + ".weight"
        assert quant[name] == ("mxfp8", 32), name
        expect = mx.quantize(mx.array(want), group_size=32, bits=8, mode="mxfp8")
        np.testing.assert_array_equal(np.array(tensors[name]), np.array(expect[0]))
        np.testing.assert_array_equal(np.array(tensors[name + "_scale"]), np.array(expect[1]))
    from test_prequant_import import nvfp4_blob_values
    for base, want in ref_nvfp4.items():
        assert quant[base + ".weight"][0] == "nvfp4"
        got = nvfp4_blob_values(tensors, base)
        np.testing.assert_array_equal(got.astype(ml_dtypes.bfloat16), want.astype(ml_dtypes.bfloat16))
    config = json.loads((store / "blobs" / ("sha256-" + manifest["config"]["digest"][7:])).read_text())
    assert config["file_type"] == ""  # nvfp4 and mxfp8 layers
