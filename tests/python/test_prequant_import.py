"""Importing already-quantized checkpoints (issue 6): MLX, NVIDIA ModelOpt NVFP4, compressed-tensors
(nvfp4-pack-quantized, pack-quantized int4 symmetric/asymmetric), gpt-oss MXFP4.

Each fixture is a real tiny model (shared/fixtures/hf) whose linear weights are quantized here into
the source format, following the format's documented layout and arithmetic (modelopt and
compressed-tensors need torch, which the default test environment does not carry, so their layouts
are written by hand: ModelOpt nvfp4_tensor.py / compressed-tensors pack_quantized.py and
fp4_quantized.py; test_prequant_real_compressors.py writes the compressed-tensors ones with the
library itself when it is installed). stquant imports it; our output is dequantized with pip MLX (mx.dequantize) and
compared with the source format's own dequantization formula - exact equality for the lossless
paths - and mlx_lm.load + generate must work on it.
"""
import json
import shutil
import struct
import subprocess
from pathlib import Path

import ml_dtypes
import mlx.core as mx
import numpy as np
import pytest

E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], np.float32)
F8 = ml_dtypes.float8_e4m3fn

# ------------------------------------------------------------------------------------------------
# safetensors by hand (any dtype label), reading through MLX.


def write_st(path: Path, tensors: dict):
    """tensors: name -> (dtype string, shape, bytes)."""
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        dtype, shape, data = tensors[name]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(data)]}
        off += len(data)
        blobs.append(data)
    raw = json.dumps(header).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)


def read_raw(path: Path) -> dict:
    """name -> (dtype string, shape, bytes), straight from the file."""
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    return {k: (v["dtype"], tuple(v["shape"]), data[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]])
            for k, v in header.items()}


def load_source(fixture: Path) -> dict:
    """name -> (dtype string, shape, bytes, float32 values)."""
    out = {}
    for f in sorted(fixture.glob("*.safetensors")):
        for name, a in mx.load(str(f)).items():
            dt = {mx.bfloat16: "BF16", mx.float16: "F16", mx.float32: "F32"}[a.dtype]
            raw = np.array(a.view(mx.uint16) if a.dtype != mx.float32 else a).tobytes()
            out[name] = (dt, a.shape, raw, np.array(a.astype(mx.float32)))
    return out


def copy_model(fixture: Path, dst: Path, tensors: dict, config_update: dict, extra_files: dict = None):
    dst.mkdir(parents=True)
    for f in fixture.iterdir():
        if f.suffix != ".safetensors" and f.name not in ("config.json", "model.safetensors.index.json"):
            shutil.copy(f, dst / f.name)
    config = json.loads((fixture / "config.json").read_text())
    config.update(config_update)
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    for name, text in (extra_files or {}).items():
        (dst / name).write_text(text)
    write_st(dst / "model.safetensors", tensors)


def load_output(out: Path) -> dict:
    weights = {}
    for f in sorted(out.glob("model*.safetensors")):
        weights.update(mx.load(str(f)))
    return weights


def run(stquant, *args, ok=True):
    r = subprocess.run([str(stquant), *map(str, args)], capture_output=True, text=True)
    if ok:
        assert r.returncode == 0, r.stderr
    return r


def generate_works(path: Path, global_scale: bool = False):
    from mlx_lm import generate, load

    model, tokenizer = load(str(path))
    if global_scale and mx.default_device() == mx.cpu:
        # MLX 0.32.4 runs nvfp4 experts with a global scale on the GPU only.
        with pytest.raises(ValueError, match="Global scale is only supported on the GPU"):
            generate(model, tokenizer, prompt="hello", max_tokens=4, verbose=False)
        return
    text = generate(model, tokenizer, prompt="hello", max_tokens=4, verbose=False)
    assert isinstance(text, str)


# ------------------------------------------------------------------------------------------------
# Formats.


def nearest_e2m1(x: np.ndarray, ties_even: bool) -> np.ndarray:
    """E2M1 codes of x (already scaled, |x| <= 6): nearest magnitude; ties to the even code
    (ModelOpt's RNE) or to the first (compressed-tensors' argmin); the sign bit from signbit."""
    d = np.abs(np.abs(x.astype(np.float64))[..., None] - E2M1[:8].astype(np.float64))
    if ties_even:
        d = d + (np.arange(8) % 2) * 1e-12
    code = np.argmin(d, axis=-1).astype(np.uint8)
    return code | (np.signbit(x).astype(np.uint8) << 3)


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """[..., K] codes -> [..., K/2] bytes, even element in the low nibble."""
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray) -> np.ndarray:
    out = np.empty(packed.shape[:-1] + (packed.shape[-1] * 2,), np.uint8)
    out[..., 0::2] = packed & 0xF
    out[..., 1::2] = packed >> 4
    return out


def modelopt_nvfp4(w: np.ndarray, ws2_mode: str):
    """ModelOpt NVFP4 (nvfp4_tensor.py): ws2 = amax / (6 * 448); block scale
    e4m3(block_amax / (6 * ws2)); codes E2M1(w / (ws * ws2)), RNE. ws2_mode "one": ws2 = 1."""
    out_dim, in_dim = w.shape
    blocks = w.reshape(out_dim, in_dim // 16, 16)
    ws2 = np.float32(1.0) if ws2_mode == "one" else np.float32(np.abs(w).max() / np.float32(6 * 448))
    bamax = np.abs(blocks).max(-1)
    ws = np.maximum(bamax / (np.float32(6) * ws2), np.float32(2**-9)).astype(np.float32).astype(F8)
    denom = ws.astype(np.float32) * ws2
    x = np.clip(blocks / denom[..., None], -6, 6)
    codes = nearest_e2m1(x, ties_even=True).reshape(out_dim, in_dim)
    return pack_nibbles(codes), ws.view(np.uint8), ws2


def modelopt_dequant(packed, scale_bytes, ws2):
    """ModelOpt's dequantization: f32(e2m1 * f32(e4m3 * weight_scale_2))."""
    codes = unpack_nibbles(packed)
    block = (scale_bytes.view(F8).astype(np.float32) * np.float32(ws2)).astype(np.float32)
    return (E2M1[codes] * np.repeat(block, 16, axis=-1)).astype(np.float32)


def ct_nvfp4(w: np.ndarray):
    """compressed-tensors nvfp4-pack-quantized: weight_global_scale G = 448 * 6 / amax (stored
    inverted); block scale e4m3(G * block_amax / 6); codes argmin(|x / (scale / G)|)."""
    out_dim, in_dim = w.shape
    blocks = w.reshape(out_dim, in_dim // 16, 16)
    g = np.float32(np.float32(448 * 6) / np.abs(w).max())
    bamax = np.abs(blocks).max(-1)
    scale = (g * (bamax / np.float32(6))).astype(np.float32).astype(F8)
    local = (scale.astype(np.float32) / g).astype(np.float32)
    x = np.clip(blocks / np.where(local == 0, 1, local)[..., None], -6, 6)
    codes = nearest_e2m1(x, ties_even=False).reshape(out_dim, in_dim)
    return pack_nibbles(codes), scale.view(np.uint8), g


def ct_nvfp4_dequant(packed, scale_bytes, g):
    """compressed-tensors' dequantize: f32(e2m1 * f32(scale / global_scale))."""
    codes = unpack_nibbles(packed)
    block = (scale_bytes.view(F8).astype(np.float32) / np.float32(g)).astype(np.float32)
    return (E2M1[codes] * np.repeat(block, 16, axis=-1)).astype(np.float32)


def pack_int32(values: np.ndarray, bits: int, dim: int = 1) -> np.ndarray:
    """compressed-tensors pack_to_int32: values (signed) + 2^(bits-1), 32/bits per word, LSB first,
    along `dim`."""
    u = (values.astype(np.int64) + (1 << (bits - 1))).astype(np.uint32)
    if dim == 0:
        u = u.T
    pf = 32 // bits
    rows, cols = u.shape
    pad = (-cols) % pf
    u = np.pad(u, ((0, 0), (0, pad)))
    u = u.reshape(rows, -1, pf)
    packed = np.zeros(u.shape[:2], np.uint32)
    for i in range(pf):
        packed |= u[:, :, i] << np.uint32(bits * i)
    if dim == 0:
        packed = packed.T
    return np.ascontiguousarray(packed).view(np.int32)


def ct_int(w: np.ndarray, group: int, symmetric: bool, coarse_scales: bool, bits: int = 4):
    """compressed-tensors pack-quantized int (group strategy): symmetric scale amax / ((2^b - 1) / 2),
    q = clamp(round(w / s)); asymmetric scale (max - min) / (2^b - 1), zero point round(-min / s) +
    qmin. Scales are stored in bf16 (the weight dtype). coarse_scales: scales rounded to 4
    significant bits (so that every zero-point bias is exact in bf16)."""
    out_dim, in_dim = w.shape
    g = w.reshape(out_dim, in_dim // group, group)
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if symmetric:
        s = np.abs(g).max(-1) / np.float32((qmax - qmin) / 2)
    else:
        mn, mx_ = np.minimum(g.min(-1), 0), np.maximum(g.max(-1), 0)
        s = (mx_ - mn) / np.float32(qmax - qmin)
    s = np.where(s == 0, np.float32(1e-3), s).astype(np.float32)
    if coarse_scales:
        m, e = np.frexp(s)
        s = np.ldexp(np.round(m * 16) / 16, e).astype(np.float32)
    s = s.astype(ml_dtypes.bfloat16)
    sf = s.astype(np.float32)
    if symmetric:
        zp = np.zeros_like(sf, dtype=np.int64)
    else:
        zp = np.clip(np.round(-mn / sf) + qmin, qmin, qmax).astype(np.int64)
    q = np.clip(np.round(g / sf[..., None]) + zp[..., None], qmin, qmax).astype(np.int64)
    return q.reshape(out_dim, in_dim), s, zp


def st_entry(dtype, arr):
    return (dtype, arr.shape, np.ascontiguousarray(arr).tobytes())


def source_file_bytes(src, name):
    dt, shape, raw, _ = src[name]
    return (dt, shape, raw)


# ------------------------------------------------------------------------------------------------
# Fixture builders.


def build_modelopt(shared_dir, dst: Path, fixture: str, select, ws2_mode: str):
    src = load_source(shared_dir / "fixtures/hf" / fixture)
    tensors, ref = {}, {}
    for name, (dt, shape, raw, values) in src.items():
        if select(name):
            packed, scales, ws2 = modelopt_nvfp4(values, ws2_mode)
            base = name[: -len(".weight")]
            tensors[name] = st_entry("U8", packed)
            tensors[base + ".weight_scale"] = st_entry("F8_E4M3", scales)
            tensors[base + ".weight_scale_2"] = st_entry("F32", np.array(ws2, np.float32).reshape(()))
            tensors[base + ".input_scale"] = st_entry("F32", np.array(0.01, np.float32).reshape(()))
            ref[base] = modelopt_dequant(packed, scales, ws2)
        else:
            tensors[name] = (dt, shape, raw)
    hf_quant = {"producer": {"name": "modelopt", "version": "0.29.0"},
                "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": None, "group_size": 16,
                                 "exclude_modules": ["lm_head"]}}
    copy_model(shared_dir / "fixtures/hf" / fixture, dst, tensors, {},
               {"hf_quant_config.json": json.dumps(hf_quant, indent=2)})
    return ref


def build_ct_nvfp4(shared_dir, dst: Path, fixture: str, select):
    src = load_source(shared_dir / "fixtures/hf" / fixture)
    tensors, ref = {}, {}
    for name, (dt, shape, raw, values) in src.items():
        if select(name):
            packed, scales, g = ct_nvfp4(values)
            base = name[: -len(".weight")]
            tensors[base + ".weight_packed"] = st_entry("U8", packed)
            tensors[base + ".weight_scale"] = st_entry("F8_E4M3", scales)
            tensors[base + ".weight_global_scale"] = st_entry("F32", np.array([g], np.float32))
            tensors[base + ".input_global_scale"] = st_entry("F32", np.array([100.0], np.float32))
            ref[base] = ct_nvfp4_dequant(packed, scales, g)
        else:
            tensors[name] = (dt, shape, raw)
    qc = {"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
          "config_groups": {"group_0": {"targets": ["Linear"], "format": "nvfp4-pack-quantized",
                                        "weights": {"num_bits": 4, "type": "float", "symmetric": True,
                                                    "strategy": "tensor_group", "group_size": 16}}},
          "ignore": ["lm_head"]}
    copy_model(shared_dir / "fixtures/hf" / fixture, dst, tensors, {"quantization_config": qc})
    return ref


def build_ct_int(shared_dir, dst: Path, symmetric: bool, coarse: bool, group=64):
    fixture = shared_dir / "fixtures/hf/tiny-llama"
    src = load_source(fixture)
    tensors, ref = {}, {}
    for name, (dt, shape, raw, values) in src.items():
        if "layers." in name and name.endswith("proj.weight"):
            q, s, zp = ct_int(values, group, symmetric, coarse)
            base = name[: -len(".weight")]
            tensors[base + ".weight_packed"] = st_entry("I32", pack_int32(q, 4))
            tensors[base + ".weight_scale"] = st_entry("BF16", s)
            tensors[base + ".weight_shape"] = st_entry("I64", np.array(values.shape, np.int64))
            if not symmetric:
                tensors[base + ".weight_zero_point"] = st_entry("I32", pack_int32(zp, 4, dim=0))
            # (q - zero_point) * scale, exactly (float64).
            ref[base] = ((q - np.repeat(zp, group, axis=-1)).astype(np.float64)
                         * np.repeat(s.astype(np.float64), group, axis=-1))
        else:
            tensors[name] = (dt, shape, raw)
    qc = {"quant_method": "compressed-tensors", "format": "pack-quantized",
          "config_groups": {"group_0": {"targets": ["Linear"],
                                        "weights": {"num_bits": 4, "type": "int", "symmetric": symmetric,
                                                    "strategy": "group", "group_size": group}}},
          "ignore": ["lm_head"]}
    copy_model(fixture, dst, tensors, {"quantization_config": qc})
    return ref


def mxfp4_quantize(w: np.ndarray):
    """OCP MXFP4 as in OpenAI's gpt-oss checkpoints: per 32 values a shared exponent
    floor(log2(amax)) - 2 (E8M0 byte + 127), E2M1 codes RNE with saturation."""
    *lead, k = w.shape
    g = w.reshape(*lead, k // 32, 32)
    amax = np.abs(g).max(-1)
    e = np.where(amax > 0, np.floor(np.log2(np.where(amax > 0, amax, 1))) - 2, -127).astype(np.int64)
    e = np.clip(e, -127, 127)
    x = np.clip(g / np.ldexp(np.float32(1), e)[..., None], -6, 6)
    codes = nearest_e2m1(x, ties_even=True)
    blocks = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)  # [..., G, 16]
    return blocks, (e + 127).astype(np.uint8)


def build_gpt_oss(shared_dir, dst: Path):
    from mlx.utils import tree_flatten
    from mlx_lm.models import gpt_oss

    cfg = dict(model_type="gpt_oss", num_hidden_layers=2, num_local_experts=4, num_experts_per_tok=2,
               vocab_size=512, hidden_size=128, intermediate_size=128, head_dim=32, num_attention_heads=4,
               num_key_value_heads=2, sliding_window=128, rope_theta=150000,
               layer_types=["sliding_attention", "full_attention"], rms_norm_eps=1e-5)
    mx.random.seed(7)
    model = gpt_oss.Model(gpt_oss.ModelArgs(**{k: v for k, v in cfg.items() if k != "model_type"}))
    params = {k: np.array(v.astype(mx.float32)) for k, v in tree_flatten(model.parameters())}
    tensors, ref = {}, {}

    def bf16(a):
        return st_entry("BF16", a.astype(ml_dtypes.bfloat16))

    for k, v in params.items():
        if ".mlp.experts." in k:
            continue
        tensors[k] = bf16(v * (0.05 if k.endswith("weight") and v.ndim == 2 else 1))
    for layer in range(2):
        p = f"model.layers.{layer}.mlp.experts."
        gate, up = params[p + "gate_proj.weight"] * 0.05, params[p + "up_proj.weight"] * 0.05
        gate_up = np.empty((4, 256, 128), np.float32)
        gate_up[:, 0::2], gate_up[:, 1::2] = gate, up
        for proj, w in (("gate_up_proj", gate_up), ("down_proj", params[p + "down_proj.weight"] * 0.05)):
            blocks, scales = mxfp4_quantize(w)
            tensors[p + proj + "_blocks"] = st_entry("U8", blocks)
            tensors[p + proj + "_scales"] = st_entry("U8", scales)
            codes = unpack_nibbles(blocks.reshape(*blocks.shape[:-2], -1))
            deq = np.ldexp(E2M1[codes], np.repeat(scales.astype(np.int64) - 127, 32, axis=-1)).astype(np.float32)
            if proj == "gate_up_proj":
                ref[p + "gate_proj"], ref[p + "up_proj"] = deq[:, 0::2], deq[:, 1::2]
            else:
                ref[p + "down_proj"] = deq
        gub = np.empty((4, 256), np.float32)
        gub[:, 0::2], gub[:, 1::2] = params[p + "gate_proj.bias"] + 0.01, params[p + "up_proj.bias"] - 0.01
        tensors[p + "gate_up_proj_bias"] = bf16(gub)
        tensors[p + "down_proj_bias"] = bf16(params[p + "down_proj.bias"] + 0.02)
        ref[p + "gate_proj.bias"] = gub[:, 0::2]
        ref[p + "up_proj.bias"] = gub[:, 1::2]
    config = dict(cfg, architectures=["GptOssForCausalLM"], torch_dtype="bfloat16", eos_token_id=2, bos_token_id=1,
                  quantization_config={"quant_method": "mxfp4",
                                       "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                                                  "model.embed_tokens", "lm_head"]})
    dst.mkdir(parents=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(shared_dir / "fixtures/hf/tiny-llama" / f, dst / f)
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    write_st(dst / "model.safetensors", tensors)
    return ref


# ------------------------------------------------------------------------------------------------
# Tests.


def is_linear(name):
    return "layers." in name and name.endswith("proj.weight")


def is_expert(name):
    return ".mlp.experts." in name and name.endswith(".weight")


def test_modelopt_dense_global_one_is_lossless(stquant, shared_dir, tmp_path):
    ref = build_modelopt(shared_dir, tmp_path / "src", "tiny-llama", is_linear, "one")
    r = run(stquant, "inspect", tmp_path / "src", "--json")
    assert json.loads(r.stdout)["source_kind"] == "modelopt-nvfp4"
    run(stquant, "convert", tmp_path / "src", "-o", tmp_path / "out", "--quiet")
    out = load_output(tmp_path / "out")
    config = json.loads((tmp_path / "out/config.json").read_text())
    assert config["quantization"] == {"group_size": 16, "bits": 4, "mode": "nvfp4"}
    assert not any(k.endswith(("input_scale", "weight_scale_2", "global_scale")) for k in out)
    for base, want in ref.items():
        w, s = out[base + ".weight"], out[base + ".scales"]
        assert w.dtype == mx.uint32 and s.dtype == mx.uint8
        got = np.array(mx.dequantize(w, s, group_size=16, bits=4, mode="nvfp4", dtype=mx.float32))
        np.testing.assert_array_equal(got, want)
    generate_works(tmp_path / "out")


def test_modelopt_dense_real_global_scale_is_refused_then_requantized(stquant, shared_dir, tmp_path):
    build_modelopt(shared_dir, tmp_path / "src", "tiny-llama", is_linear, "real")
    r = run(stquant, "convert", tmp_path / "src", "-o", tmp_path / "out", "--quiet", ok=False)
    assert r.returncode == 2
    assert "cannot be folded exactly" in r.stderr and "weight_scale_2" in r.stderr and "--requantize" in r.stderr
    assert not (tmp_path / "out").exists()
    # -q without --requantize: an error explaining why.
    r = run(stquant, "convert", tmp_path / "src", "-o", tmp_path / "out", "-q", "int4", ok=False)
    assert r.returncode == 2 and "already quantized" in r.stderr and "--requantize" in r.stderr
    r = run(stquant, "convert", tmp_path / "src", "-o", tmp_path / "out", "-q", "int4", "--requantize", "--quiet")
    assert "loses accuracy" in r.stderr
    config = json.loads((tmp_path / "out/config.json").read_text())
    assert config["quantization"] == {"group_size": 64, "bits": 4, "mode": "affine"}
    # The requantized weights are int4 of the ModelOpt dequantization rounded to bf16.
    src = read_raw(tmp_path / "src/model.safetensors")
    out = load_output(tmp_path / "out")
    base = "model.layers.0.self_attn.q_proj"
    packed = np.frombuffer(src[base + ".weight"][2], np.uint8).reshape(src[base + ".weight"][1])
    scales = np.frombuffer(src[base + ".weight_scale"][2], np.uint8).reshape(src[base + ".weight_scale"][1])
    ws2 = np.frombuffer(src[base + ".weight_scale_2"][2], np.float32)[0]
    deq = mx.array(modelopt_dequant(packed, scales, ws2)).astype(mx.bfloat16)
    w, s, b = mx.quantize(deq, group_size=64, bits=4)
    assert np.array_equal(np.array(w), np.array(out[base + ".weight"]))
    assert np.array_equal(np.array(s.astype(mx.float32)), np.array(out[base + ".scales"].astype(mx.float32)))
    generate_works(tmp_path / "out")


def test_modelopt_moe_experts_keep_global_scale(stquant, shared_dir, tmp_path):
    ref = build_modelopt(shared_dir, tmp_path / "src", "tiny-qwen3-moe", is_expert, "real")
    run(stquant, "convert", tmp_path / "src", "-o", tmp_path / "out", "--quiet")
    out = load_output(tmp_path / "out")
    for layer in range(2):
        for proj in ("gate_proj", "up_proj", "down_proj"):
            p = f"model.layers.{layer}.mlp.switch_mlp.{proj}"
            w, s, g = out[p + ".weight"], out[p + ".scales"], out[p + ".global_scale"]
            assert g.dtype == mx.float32 and g.shape == (8,)
            for e in range(8):
                got = np.array(mx.dequantize(w[e], s[e], group_size=16, bits=4, mode="nvfp4", global_scale=g[e],
                                             dtype=mx.float32))
                np.testing.assert_array_equal(got, ref[f"model.layers.{layer}.mlp.experts.{e}.{proj}"])
    generate_works(tmp_path / "out", global_scale=True)


def test_compressed_tensors_nvfp4_moe(stquant, shared_dir, tmp_path):
    ref = build_ct_nvfp4(shared_dir, tmp_path / "src", "tiny-qwen3-moe", is_expert)
    r = run(stquant, "inspect", tmp_path / "src", "--json")
    assert json.loads(r.stdout)["source_kind"] == "compressed-tensors"
    run(stquant, "convert", tmp_path / "src", "-o", tmp_path / "out", "--quiet")
    out = load_output(tmp_path / "out")
    assert not any("weight_global_scale" in k or "input_global_scale" in k for k in out)
    for layer in range(2):
        for proj in ("gate_proj", "up_proj", "down_proj"):
            p = f"model.layers.{layer}.mlp.switch_mlp.{proj}"
            w, s, g = out[p + ".weight"], out[p + ".scales"], out[p + ".global_scale"]
            for e in range(8):
                got = np.array(mx.dequantize(w[e], s[e], group_size=16, bits=4, mode="nvfp4", global_scale=g[e],
                                             dtype=mx.float32))
                want = ref[f"model.layers.{layer}.mlp.experts.{e}.{proj}"]
                # compressed-tensors decompresses to bfloat16: equal there (float32 may differ by an ulp
                # where its division by the global scale cannot be a float32 multiplication).
                np.testing.assert_array_equal(got.astype(ml_dtypes.bfloat16), want.astype(ml_dtypes.bfloat16))
                assert np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-30)) <= 2**-23
    generate_works(tmp_path / "out", global_scale=True)


def check_int_exact(out, ref, group):
    for base, want in ref.items():
        w, s, b = out[base + ".weight"], out[base + ".scales"], out[base + ".biases"]
        assert w.dtype == mx.uint32 and s.dtype == mx.bfloat16 and b.dtype == mx.bfloat16
        # The stored codes, scales and biases give the source's values exactly: MLX's dequantize in
        # float32 (where code * scale + bias has no rounding) equals (q - zero_point) * scale.
        got = np.array(mx.dequantize(w, s.astype(mx.float32), b.astype(mx.float32), group_size=group, bits=4,
                                     dtype=mx.float32)).astype(np.float64)
        np.testing.assert_array_equal(got, want)


def test_compressed_tensors_int4_symmetric(stquant, shared_dir, tmp_path):
    ref = build_ct_int(shared_dir, tmp_path / "src", symmetric=True, coarse=False)
    run(stquant, "convert", tmp_path / "src", "-o", tmp_path / "out", "--quiet")
    out = load_output(tmp_path / "out")
    config = json.loads((tmp_path / "out/config.json").read_text())
    assert config["quantization"] == {"group_size": 64, "bits": 4, "mode": "affine"}
    assert not any(k.endswith(("weight_shape", "weight_packed")) for k in out)
    check_int_exact(out, ref, 64)
    # bias = -8 * scale exactly.
    base = "model.layers.1.mlp.down_proj"
    np.testing.assert_array_equal(np.array(out[base + ".biases"].astype(mx.float32)),
                                  -8 * np.array(out[base + ".scales"].astype(mx.float32)))
    generate_works(tmp_path / "out")


def test_compressed_tensors_int4_asymmetric(stquant, shared_dir, tmp_path):
    ref = build_ct_int(shared_dir, tmp_path / "src", symmetric=False, coarse=True)
    run(stquant, "convert", tmp_path / "src", "-o", tmp_path / "out", "--quiet")
    check_int_exact(load_output(tmp_path / "out"), ref, 64)
    generate_works(tmp_path / "out")
    # Zero points whose bias -zp * scale needs more bits than bf16 has: refused, naming the layer.
    build_ct_int(shared_dir, tmp_path / "src2", symmetric=False, coarse=False)
    r = run(stquant, "convert", tmp_path / "src2", "-o", tmp_path / "out2", ok=False)
    assert r.returncode == 2 and "not exactly representable in BF16" in r.stderr and "layer 'model.layers." in r.stderr


def test_gpt_oss_mxfp4(stquant, shared_dir, tmp_path):
    ref = build_gpt_oss(shared_dir, tmp_path / "src")
    r = run(stquant, "inspect", tmp_path / "src", "--json")
    assert json.loads(r.stdout)["source_kind"] == "gpt-oss-mxfp4"
    run(stquant, "convert", tmp_path / "src", "-o", tmp_path / "out", "--quiet")
    out = load_output(tmp_path / "out")
    config = json.loads((tmp_path / "out/config.json").read_text())
    assert config["quantization"] == {"group_size": 32, "bits": 4, "mode": "mxfp4"}
    for key, want in ref.items():
        if key.endswith(".bias"):
            np.testing.assert_array_equal(np.array(out[key].astype(mx.float32)),
                                          want.astype(ml_dtypes.bfloat16).astype(np.float32))
            continue
        w, s = out[key + ".weight"], out[key + ".scales"]
        got = np.array(mx.dequantize(w, s, group_size=32, bits=4, mode="mxfp4", dtype=mx.float32))
        np.testing.assert_array_equal(got, want)
    generate_works(tmp_path / "out")


def test_mlx_source_is_copied(stquant, shared_dir, tmp_path):
    run(stquant, "convert", shared_dir / "fixtures/hf/tiny-qwen3-moe", "-o", tmp_path / "mlx", "-q", "int4",
        "--recipe", "mixed_3_6", "--quiet")
    r = run(stquant, "inspect", tmp_path / "mlx", "--json")
    assert json.loads(r.stdout)["source_kind"] == "mlx"
    run(stquant, "convert", tmp_path / "mlx", "-o", tmp_path / "out", "--shard-size", "300KiB", "--quiet")
    a, b = load_output(tmp_path / "mlx"), load_output(tmp_path / "out")
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(np.array(a[k].view(mx.uint8)), np.array(b[k].view(mx.uint8)))
    assert len(list((tmp_path / "out").glob("model-*.safetensors"))) > 1
    ca = json.loads((tmp_path / "mlx/config.json").read_text())
    cb = json.loads((tmp_path / "out/config.json").read_text())
    assert ca["quantization"] == cb["quantization"]
    generate_works(tmp_path / "out")
    # -q: refused without --requantize; with it, the MLX dequantization is quantized again.
    r = run(stquant, "convert", tmp_path / "mlx", "-o", tmp_path / "rq", "-q", "mxfp4", ok=False)
    assert r.returncode == 2 and "--requantize" in r.stderr
    run(stquant, "convert", tmp_path / "mlx", "-o", tmp_path / "rq", "-q", "int8", "--requantize", "--quiet")
    generate_works(tmp_path / "rq")


def test_unsupported_and_mixed_formats_are_refused(stquant, shared_dir, tmp_path):
    fixture = shared_dir / "fixtures/hf/tiny-llama"
    src = load_source(fixture)
    plain = {k: (dt, shape, raw) for k, (dt, shape, raw, _) in src.items()}
    # GPTQ: qweight/qzeros/scales.
    gptq = dict(plain)
    base = "model.layers.0.self_attn.q_proj"
    del gptq[base + ".weight"]
    gptq[base + ".qweight"] = st_entry("I32", np.zeros((32, 256), np.int32))
    gptq[base + ".qzeros"] = st_entry("I32", np.zeros((2, 32), np.int32))
    gptq[base + ".scales"] = st_entry("F16", np.zeros((2, 256), np.float16))
    copy_model(fixture, tmp_path / "gptq", gptq, {"quantization_config": {"quant_method": "gptq", "bits": 4}})
    r = run(stquant, "convert", tmp_path / "gptq", "-o", tmp_path / "o1", ok=False)
    assert r.returncode == 2 and "gptq" in r.stderr and "qweight" in r.stderr
    # bitsandbytes.
    copy_model(fixture, tmp_path / "bnb", plain, {"quantization_config": {"quant_method": "bitsandbytes"}})
    r = run(stquant, "convert", tmp_path / "bnb", "-o", tmp_path / "o2", ok=False)
    assert r.returncode == 2 and "bitsandbytes" in r.stderr
    # Unknown integer weights without a config.
    odd = dict(plain)
    odd[base + ".weight"] = st_entry("I8", np.zeros((256, 256), np.int8))
    copy_model(fixture, tmp_path / "odd", odd, {})
    r = run(stquant, "convert", tmp_path / "odd", "-o", tmp_path / "o3", ok=False)
    assert r.returncode == 2 and base + ".weight" in r.stderr and "I8" in r.stderr
    # Two formats: ModelOpt NVFP4 and compressed-tensors in one checkpoint.
    mixed = dict(plain)
    packed, scales, ws2 = modelopt_nvfp4(src[base + ".weight"][3], "one")
    mixed[base + ".weight"] = st_entry("U8", packed)
    mixed[base + ".weight_scale"] = st_entry("F8_E4M3", scales)
    mixed[base + ".weight_scale_2"] = st_entry("F32", np.array(ws2, np.float32).reshape(()))
    other = "model.layers.0.self_attn.k_proj"
    del mixed[other + ".weight"]
    mixed[other + ".weight_packed"] = st_entry("I32", np.zeros((128, 32), np.int32))
    mixed[other + ".weight_scale"] = st_entry("BF16", np.zeros((128, 4), ml_dtypes.bfloat16))
    copy_model(fixture, tmp_path / "mixed", mixed, {})
    r = run(stquant, "convert", tmp_path / "mixed", "-o", tmp_path / "o4", ok=False)
    assert r.returncode == 2 and "mixes quantization formats" in r.stderr
    assert "modelopt-nvfp4" in r.stderr and "compressed-tensors" in r.stderr
    # A compressed-tensors format stquant does not read.
    copy_model(fixture, tmp_path / "fq", {**plain, other + ".weight_packed": st_entry("I32", np.zeros((1, 1), np.int32))},
               {"quantization_config": {"quant_method": "compressed-tensors", "format": "marlin-24"}})
    r = run(stquant, "convert", tmp_path / "fq", "-o", tmp_path / "o5", ok=False)
    assert r.returncode == 2 and "marlin-24" in r.stderr and "weight_packed" in r.stderr


# ------------------------------------------------------------------------------------------------
# The ollama layout (ollama-create-spec §6.3): one blob "<base>.weight" per quantized layer holding
# "<base>.weight" (U32), ".weight.scale", ".weight.bias" (affine), ".weight.global_scale" (nvfp4:
# ModelOpt's weight_scale_2 as it is, compressed-tensors' 1 / weight_global_scale), metadata
# quant_type / group_size; every other tensor a blob of its own, byte-exact; experts per expert.
# Read back as ollama's MLX runner reads the store (test_ollama_store.load_model).

from test_ollama_store import TENSOR, load_model, manifest_path  # noqa: E402


def import_ollama(stquant, src, store, *args, ok=True):
    return run(stquant, "convert", src, "--layout", "ollama", "--models-dir", store, "--name", "x", "--quiet", *args,
               ok=ok)


def read_blobs(store):
    """layer name -> (header without offsets, metadata) for every tensor blob, in manifest order;
    plus the runner's flat tensor map and per-tensor (quant_type, group_size)."""
    manifest, tensors, quant, raw = load_model(store, "x")
    blobs = {}
    for layer in manifest["layers"]:
        if layer["mediaType"] != TENSOR:
            continue
        data = (store / "blobs" / ("sha256-" + layer["digest"].split(":")[1])).read_bytes()
        header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
        metadata = header.pop("__metadata__", {})
        blobs[layer["name"]] = ({k: (v["dtype"], tuple(v["shape"])) for k, v in header.items()}, metadata)
    return manifest, blobs, tensors, quant, raw


def mlx_global_scale(scale):
    """The float32 g of MLX's nvfp4 dequantize (block scale e4m3 * f32(g / 2688)) that applies the
    per-tensor multiplier `scale` exactly: the runner's .weight.global_scale (ModelOpt's
    weight_scale_2 semantics) in MLX's terms; None where there is none: 2688 = 1.3125 * 2^11, so
    where the mantissa of `scale` is 2 / 1.3125 or more, consecutive float32 g give values of
    g / 2688 about 1.5 ulp apart and some float32 scales are skipped."""
    scale = np.float32(scale)
    g = np.float32(scale * np.float32(2688))
    for _ in range(64):
        q = np.float32(g / np.float32(2688))
        if q == scale:
            return g
        g = np.nextafter(g, np.float32(np.inf) if q < scale else np.float32(0))
    return None


def nvfp4_blob_values(tensors, base):
    g = tensors[base + ".weight.global_scale"]
    assert g.dtype == mx.float32 and g.shape == ()
    w, s = tensors[base + ".weight"], tensors[base + ".weight_scale"]
    assert w.dtype == mx.uint32 and s.dtype == mx.uint8
    mlx_g = mlx_global_scale(g.item())
    if mlx_g is not None:
        return np.array(mx.dequantize(w, s, group_size=16, bits=4, mode="nvfp4", dtype=mx.float32,
                                      global_scale=mx.array(mlx_g)))
    # The same arithmetic in two steps: the E2M1 values from MLX (block scales 1.0), times the block
    # scales e4m3 * global_scale rounded to float32.
    codes = np.array(mx.dequantize(w, mx.full(s.shape, 0x38, mx.uint8), group_size=16, bits=4, mode="nvfp4",
                                   dtype=mx.float32))
    block = np.array(s).view(F8).astype(np.float32) * np.float32(g.item())
    return codes * np.repeat(block, 16, axis=-1)


def check_layer_blob(blobs, base, quant_type, group, extra):
    header, metadata = blobs[base + ".weight"]
    assert sorted(header) == sorted(base + ".weight" + s for s in ("", ".scale", *extra))
    assert header[base + ".weight"][0] == "U32"
    want = {"quant_type": quant_type}
    if group is not None:
        want["group_size"] = str(group)
    assert metadata == want


@pytest.mark.parametrize("ws2_mode", ["one", "real"])
def test_ollama_modelopt_dense(stquant, shared_dir, tmp_path, ws2_mode):
    # Any weight_scale_2 is kept exactly: the store carries it as the layer's global scale.
    ref = build_modelopt(shared_dir, tmp_path / "src", "tiny-llama", is_linear, ws2_mode)
    import_ollama(stquant, tmp_path / "src", tmp_path / "store")
    manifest, blobs, tensors, quant, raw = read_blobs(tmp_path / "store")
    src = read_raw(tmp_path / "src/model.safetensors")
    names = list(blobs)
    assert names == sorted(names)
    assert not any(k.endswith(("input_scale", "weight_scale_2", "weight_scale")) for k in raw)
    for base, want in ref.items():
        check_layer_blob(blobs, base, "nvfp4", None, [".global_scale"])  # ModelOpt: no group_size (§6.3)
        assert quant[base + ".weight"] == ("nvfp4", 16)
        assert raw[base + ".weight"][1] == src[base + ".weight"][2]  # the packed bytes, relabelled
        assert raw[base + ".weight.scale"] == ("U8", src[base + ".weight_scale"][2])
        assert raw[base + ".weight.global_scale"] == ("F32", src[base + ".weight_scale_2"][2])
        np.testing.assert_array_equal(nvfp4_blob_values(tensors, base), want)
    # Pass-through tensors: their own blobs, byte-exact.
    for name, (dt, shape, data) in src.items():
        if not name.startswith(tuple(ref)):
            assert blobs[name][0] == {name: (dt, shape)} and raw[name] == (dt, data)
    config = json.loads((tmp_path / "store/blobs" / ("sha256-" + manifest["config"]["digest"][7:])).read_text())
    assert config["file_type"] == "nvfp4"
    # hf_quant_config.json is one of the config layers, as every *.json.
    assert "hf_quant_config.json" in [l.get("name") for l in manifest["layers"]]


def test_ollama_modelopt_experts_stay_per_expert(stquant, shared_dir, tmp_path):
    ref = build_modelopt(shared_dir, tmp_path / "src", "tiny-qwen3-moe", is_expert, "real")
    import_ollama(stquant, tmp_path / "src", tmp_path / "store")
    _, blobs, tensors, quant, raw = read_blobs(tmp_path / "store")
    assert not any("switch_mlp" in n or n.endswith(".mlp.experts") for n in blobs)
    assert len(ref) == 2 * 3 * 8
    for base, want in ref.items():
        check_layer_blob(blobs, base, "nvfp4", None, [".global_scale"])
        np.testing.assert_array_equal(nvfp4_blob_values(tensors, base), want)


def test_ollama_compressed_tensors_nvfp4(stquant, shared_dir, tmp_path):
    ref = build_ct_nvfp4(shared_dir, tmp_path / "src", "tiny-qwen3-moe", is_expert)
    import_ollama(stquant, tmp_path / "src", tmp_path / "store")
    _, blobs, tensors, quant, raw = read_blobs(tmp_path / "store")
    src = read_raw(tmp_path / "src/model.safetensors")
    assert not any(k.endswith(("weight_packed", "weight_global_scale", "input_global_scale")) for k in raw)
    for base, want in ref.items():
        check_layer_blob(blobs, base, "nvfp4", 16, [".global_scale"])
        G = np.frombuffer(src[base + ".weight_global_scale"][2], np.float32)[0]
        assert tensors[base + ".weight.global_scale"].item() == np.float32(1) / G  # reciprocal_f32
        got = nvfp4_blob_values(tensors, base)
        # f32(e4m3 * f32(1/G)) may differ from compressed-tensors' f32(e4m3 / G) by an ulp; its
        # decompressor returns bfloat16, where they are equal.
        np.testing.assert_array_equal(got.astype(ml_dtypes.bfloat16), want.astype(ml_dtypes.bfloat16))
        assert np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-30)) <= 2**-23


@pytest.mark.parametrize("symmetric", [True, False])
def test_ollama_compressed_tensors_int4(stquant, shared_dir, tmp_path, symmetric):
    ref = build_ct_int(shared_dir, tmp_path / "src", symmetric=symmetric, coarse=not symmetric)
    import_ollama(stquant, tmp_path / "src", tmp_path / "store")
    _, blobs, tensors, quant, raw = read_blobs(tmp_path / "store")
    assert not any(k.endswith(("weight_shape", "weight_packed", "weight_zero_point")) for k in raw)
    for base, want in ref.items():
        check_layer_blob(blobs, base, "int4", 64, [".bias"])
        w, s, b = tensors[base + ".weight"], tensors[base + ".weight_scale"], tensors[base + ".weight_qbias"]
        assert s.dtype == mx.bfloat16 and b.dtype == mx.bfloat16
        got = np.array(mx.dequantize(w, s.astype(mx.float32), b.astype(mx.float32), group_size=64, bits=4,
                                     dtype=mx.float32)).astype(np.float64)
        np.testing.assert_array_equal(got, want)
    if not symmetric:
        build_ct_int(shared_dir, tmp_path / "src2", symmetric=False, coarse=False)
        r = import_ollama(stquant, tmp_path / "src2", tmp_path / "store2", ok=False)
        assert r.returncode == 2 and "not exactly representable in BF16" in r.stderr and "layer 'model.layers." in r.stderr
        assert not manifest_path(tmp_path / "store2", "x").exists()


def test_ollama_gpt_oss_mxfp4(stquant, shared_dir, tmp_path):
    # ollama imports gpt-oss only in mlx-lm's layout (§2.6): gate_up split into gate_proj / up_proj.
    ref = build_gpt_oss(shared_dir, tmp_path / "src")
    import_ollama(stquant, tmp_path / "src", tmp_path / "store")
    _, blobs, tensors, quant, raw = read_blobs(tmp_path / "store")
    assert not any(k.endswith(("_blocks", "_scales", "_bias")) for k in raw)
    for key, want in ref.items():
        if key.endswith(".bias"):
            assert blobs[key][0] == {key: ("BF16", want.shape)}
            np.testing.assert_array_equal(np.array(tensors[key].astype(mx.float32)),
                                          want.astype(ml_dtypes.bfloat16).astype(np.float32))
            continue
        check_layer_blob(blobs, key, "mxfp4", 32, [])
        w, s = tensors[key + ".weight"], tensors[key + ".weight_scale"]
        got = np.array(mx.dequantize(w, s, group_size=32, bits=4, mode="mxfp4", dtype=mx.float32))
        np.testing.assert_array_equal(got, want)


def test_ollama_mlx_source(stquant, shared_dir, tmp_path):
    run(stquant, "convert", shared_dir / "fixtures/hf/tiny-qwen3-moe", "-o", tmp_path / "mlx", "-q", "int4", "--quiet")
    import_ollama(stquant, tmp_path / "mlx", tmp_path / "store")
    manifest, blobs, tensors, quant, raw = read_blobs(tmp_path / "store")
    mlx = read_raw(tmp_path / "mlx/model.safetensors")
    layers = [n[: -len(".scales")] for n in mlx if n.endswith(".scales")]
    assert layers
    config = json.loads((tmp_path / "mlx/config.json").read_text())
    for base in layers:
        # Per-layer config entries (the qwen3_moe router is 8-bit) reach the blob metadata.
        bits = config["quantization"].get(base, {}).get("bits", 4)
        check_layer_blob(blobs, base, f"int{bits}", 64, [".bias"])
        for ours, theirs in (("", ".weight"), (".scale", ".scales"), (".bias", ".biases")):
            assert raw[base + ".weight" + ours] == (mlx[base + theirs][0], mlx[base + theirs][2])
    assert {quant[b + ".weight"][0] for b in layers} == {"int4", "int8"}
    ollama_config = json.loads((tmp_path / "store/blobs" / ("sha256-" + manifest["config"]["digest"][7:])).read_text())
    assert ollama_config["file_type"] == ""  # mixed types (§5)
    # A type ollama's runner has no name for is refused, naming the layer.
    run(stquant, "convert", shared_dir / "fixtures/hf/tiny-qwen3", "-o", tmp_path / "mlx3", "-q", "int3", "--quiet")
    r = import_ollama(stquant, tmp_path / "mlx3", tmp_path / "store3", ok=False)
    assert r.returncode == 2 and "layer 'model.embed_tokens' is int3" in r.stderr


def test_ollama_requantize_and_q_error(stquant, shared_dir, tmp_path):
    build_modelopt(shared_dir, tmp_path / "src", "tiny-llama", is_linear, "real")
    r = import_ollama(stquant, tmp_path / "src", tmp_path / "store", "-q", "int4", ok=False)
    assert r.returncode == 2
    assert 'cannot requantize an already-quantized source model (requested "int4")' in r.stderr
    assert "--requantize" in r.stderr
    assert not (tmp_path / "store/manifests").exists()
    r = import_ollama(stquant, tmp_path / "src", tmp_path / "store", "-q", "int4", "--requantize")
    assert "loses accuracy" in r.stderr
    manifest, blobs, tensors, quant, raw = read_blobs(tmp_path / "store")
    src = read_raw(tmp_path / "src/model.safetensors")
    # The ModelOpt dequantization rounded to bf16, quantized as ollama's policy says (v/k/down int8).
    for base, q in (("model.layers.0.self_attn.q_proj", "int4"), ("model.layers.1.self_attn.v_proj", "int8")):
        assert quant[base + ".weight"] == (q, 64)
        packed = np.frombuffer(src[base + ".weight"][2], np.uint8).reshape(src[base + ".weight"][1])
        scales = np.frombuffer(src[base + ".weight_scale"][2], np.uint8).reshape(src[base + ".weight_scale"][1])
        ws2 = np.frombuffer(src[base + ".weight_scale_2"][2], np.float32)[0]
        deq = mx.array(modelopt_dequant(packed, scales, ws2)).astype(mx.bfloat16)
        want = mx.quantize(deq, group_size=64, bits=int(q[3:]))
        got = (tensors[base + ".weight"], tensors[base + ".weight_scale"], tensors[base + ".weight_qbias"])
        for a, b in zip(got, want):
            assert a.dtype == b.dtype and bytes(memoryview(a)) == bytes(memoryview(b)), base
    config = json.loads((tmp_path / "store/blobs" / ("sha256-" + manifest["config"]["digest"][7:])).read_text())
    assert config["file_type"] == "int4"


def test_ollama_prequant_deterministic_inspect_and_draft(stquant, shared_dir, tmp_path):
    build_ct_nvfp4(shared_dir, tmp_path / "src", "tiny-llama", is_linear)
    import_ollama(stquant, tmp_path / "src", tmp_path / "a")
    import_ollama(stquant, tmp_path / "src", tmp_path / "b")
    assert manifest_path(tmp_path / "a", "x").read_bytes() == manifest_path(tmp_path / "b", "x").read_bytes()
    # stquant inspect reads the model back from the store.
    r = run(stquant, "inspect", "--models-dir", tmp_path / "a", "x", "--json")
    report = json.loads(r.stdout)
    assert report["config"]["file_type"] == "nvfp4"
    q = {t["name"]: (t.get("quant_type"), t.get("group_size")) for l in report["layers"] for t in l.get("tensors", [])}
    assert q["model.layers.0.self_attn.q_proj.weight"] == ("nvfp4", "16")
    assert q["model.norm.weight"] == (None, None)
    # A prequantized draft: the same blobs, prefixed "draft.".
    import_ollama(stquant, shared_dir / "fixtures/hf/tiny-qwen3", tmp_path / "d", "--draft", tmp_path / "src")
    _, blobs, _, quant, _ = read_blobs(tmp_path / "d")
    base = "draft.model.layers.0.self_attn.q_proj"
    assert sorted(blobs[base + ".weight"][0]) == [base + ".weight" + s for s in ("", ".global_scale", ".scale")]
    assert blobs[base + ".weight"][1] == {"quant_type": "nvfp4", "group_size": "16"}
    assert quant[base + ".weight"] == ("nvfp4", 16)


def build_ct_mixed_precision(shared_dir, dst: Path, with_nvfp4: bool):
    """compressed-tensors format "mixed-precision": each config group its own format. Attention
    layers pack-quantized int4 (group 64), v_proj int8 (group 128), MLP layers nvfp4-pack-quantized
    (or, without with_nvfp4, int8 group 128 as well). Returns layer -> (kind, reference values)."""
    fixture = shared_dir / "fixtures/hf/tiny-llama"
    src = load_source(fixture)
    tensors, ref = {}, {}
    for name, (dt, shape, raw, values) in src.items():
        base = name[: -len(".weight")]
        if not is_linear(name):
            tensors[name] = (dt, shape, raw)
        elif "mlp" in name and with_nvfp4:
            packed, scales, g = ct_nvfp4(values)
            tensors[base + ".weight_packed"] = st_entry("U8", packed)
            tensors[base + ".weight_scale"] = st_entry("F8_E4M3", scales)
            tensors[base + ".weight_global_scale"] = st_entry("F32", np.array([g], np.float32))
            ref[base] = ("nvfp4", ct_nvfp4_dequant(packed, scales, g))
        else:
            bits, group = (8, 128) if ("v_proj" in name or "mlp" in name) else (4, 64)
            q, s, zp = ct_int(values, group, True, False, bits=bits)
            tensors[base + ".weight_packed"] = st_entry("I32", pack_int32(q, bits))
            tensors[base + ".weight_scale"] = st_entry("BF16", s)
            tensors[base + ".weight_shape"] = st_entry("I64", np.array(values.shape, np.int64))
            ref[base] = (f"int{bits}/{group}", q.astype(np.float64) * np.repeat(s.astype(np.float64), group, axis=-1))
    int_group = lambda bits, group, targets: {  # noqa: E731
        "targets": targets, "format": "pack-quantized",
        "weights": {"num_bits": bits, "type": "int", "symmetric": True, "strategy": "group", "group_size": group}}
    groups = {"group_0": int_group(4, 64, ["re:.*self_attn.(q|k|o)_proj"]),
              "group_1": int_group(8, 128, ["re:.*v_proj"] + ([] if with_nvfp4 else ["re:.*mlp.*"]))}
    if with_nvfp4:
        groups["group_2"] = {"targets": ["re:.*mlp.*"], "format": "nvfp4-pack-quantized",
                             "weights": {"num_bits": 4, "type": "float", "symmetric": True, "strategy": "tensor_group",
                                         "group_size": 16}}
    qc = {"quant_method": "compressed-tensors", "format": "mixed-precision", "config_groups": groups,
          "ignore": ["lm_head"]}
    copy_model(fixture, dst, tensors, {"quantization_config": qc})
    return ref


def test_compressed_tensors_mixed_precision_container(stquant, shared_dir, tmp_path):
    """A mixed-precision container of pack-quantized int4 and int8 groups: every layer imported
    losslessly as its own group (mlx layout: per-layer config entries), and with nvfp4 MLP groups
    as well into the ollama layout (one blob per layer with its own quant_type)."""
    ref = build_ct_mixed_precision(shared_dir, tmp_path / "src", with_nvfp4=False)
    r = run(stquant, "convert", tmp_path / "src", "-o", tmp_path / "out", "--dry-run")
    assert "source format: compressed-tensors mixed-precision (pack-quantized int4 (group 64, symmetric), " \
           "pack-quantized int8 (group 128, symmetric))" in r.stdout
    run(stquant, "convert", tmp_path / "src", "-o", tmp_path / "out", "--quiet")
    out = load_output(tmp_path / "out")
    config = json.loads((tmp_path / "out/config.json").read_text())
    for base, (kind, want) in ref.items():
        bits, group = (4, 64) if kind == "int4/64" else (8, 128)
        if (bits, group) != (config["quantization"]["bits"], config["quantization"]["group_size"]):
            assert config["quantization"][base] == {"group_size": group, "bits": bits, "mode": "affine"}
        w, s, b = out[base + ".weight"], out[base + ".scales"], out[base + ".biases"]
        got = np.array(mx.dequantize(w, s.astype(mx.float32), b.astype(mx.float32), group_size=group, bits=bits,
                                     dtype=mx.float32)).astype(np.float64)
        np.testing.assert_array_equal(got, want, err_msg=base)
    generate_works(tmp_path / "out")

    ref = build_ct_mixed_precision(shared_dir, tmp_path / "src2", with_nvfp4=True)
    import_ollama(stquant, tmp_path / "src2", tmp_path / "store")
    _, blobs, tensors, quant, raw = read_blobs(tmp_path / "store")
    for base, (kind, want) in ref.items():
        if kind == "nvfp4":
            check_layer_blob(blobs, base, "nvfp4", 16, [".global_scale"])
            got = nvfp4_blob_values(tensors, base)
            np.testing.assert_array_equal(got.astype(ml_dtypes.bfloat16), want.astype(ml_dtypes.bfloat16))
            continue
        bits, group = (4, 64) if kind == "int4/64" else (8, 128)
        check_layer_blob(blobs, base, f"int{bits}", group, [".bias"])
        w, s, b = tensors[base + ".weight"], tensors[base + ".weight_scale"], tensors[base + ".weight_qbias"]
        got = np.array(mx.dequantize(w, s.astype(mx.float32), b.astype(mx.float32), group_size=group, bits=bits,
                                     dtype=mx.float32)).astype(np.float64)
        np.testing.assert_array_equal(got, want, err_msg=base)
