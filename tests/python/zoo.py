"""The architecture zoo: committed fixtures of tiny checkpoints written by transformers 5.25, and
the harness comparing `stquant convert` with `mlx_lm.convert` (pip mlx-lm, CPU) on each of them.

Fixtures (tests/zoo/<arch>/, see tests/zoo/README.md):
  config.json, generation_config.json  exactly as transformers' save_pretrained wrote them (v5 form)
  header.json                          the model.safetensors header, byte for byte
  small.safetensors                    the exact values of every 1-D tensor and every tensor of at
                                       most SMALL_ELEMENTS elements (norms, biases, A_log, routers,
                                       conv kernels: what keeps a model numerically sane)
  autoconfig.json                      the part of transformers' AutoConfig object the
                                       transformers-4 form needs (see v4_config)
  tests/zoo/tokenizer/                 one tiny byte-level BPE tokenizer (320 ids) for every arch

materialize() writes a complete model directory into the cache: the other tensors are filled with
normal(0, 0.02) (transformers' own init), seeded by the tensor name, rounded to the header's dtype.

The reference is mlx_lm.convert (Python API) run on the transformers-4 form of the config
(v4_config); stquant gets the original. References are cached under build/zoo-cache keyed by
(arch, type, fixture hash, v4 config, mlx-lm version).

Command line (scripts/zoo-check wraps it):
  zoo.py check [ARCH...] [--types T,...] [-j N] [--json FILE]   compare, one line per arch x type
  zoo.py report --json FILE -o docs/architectures.md             the markdown status table
  zoo.py import RAW_ZOO_DIR [ARCH...]                            (re)write the fixtures
  zoo.py materialize ARCH [--form v5|v4|fp8|fp8-decoded]         print the cached model dir
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
ZOO = REPO / "tests" / "zoo"
TOKENIZER = ZOO / "tokenizer"
CACHE = Path(os.environ.get("STQUANT_ZOO_CACHE", REPO / "build" / "zoo-cache"))
SMALL_ELEMENTS = 1024
# Bump when the fill or the materialized layout changes: it is part of every cache key.
FILL_VERSION = 1
# Bump when the way references are made or judged (convert arguments, generation) changes.
REFERENCE_VERSION = 2
PROMPT = "The quick brown fox"
N_TOKENS = 8

# type -> (stquant args, mlx_lm.convert keyword arguments)
TYPES = {
    "none": ([], dict(quantize=False)),
    "int4": (["-q", "int4"], dict(quantize=True, q_mode="affine")),  # bits 4, group 64
    "mxfp4": (["-q", "mxfp4"], dict(quantize=True, q_mode="mxfp4")),
    "nvfp4": (["-q", "nvfp4"], dict(quantize=True, q_mode="nvfp4")),
    "mxfp8": (["-q", "mxfp8"], dict(quantize=True, q_mode="mxfp8")),
}

# The representative subset pytest runs by default (STQUANT_ZOO=all: every arch): plain dense
# (llama, qwen3 and its block-FP8 variant), tied embeddings (gemma), sanitize renames (gptj),
# fused projections (phi3), MoE stacking (mixtral, qwen3_moe), MLA + block-FP8 (deepseek_v3), a
# state-space model (mamba), a hybrid with conv, A_log and norm offsets (qwen3_next).
DEFAULT_SUBSET = ["llama", "qwen3", "gemma", "gptj", "phi3", "mixtral", "qwen3_moe", "deepseek_v3", "mamba",
                  "qwen3_next"]
# Block-FP8 variants (materialize form "fp8"): (zoo arch, how the reference gets its input)
FP8_VARIANTS = {"deepseek_v3": "fp8", "qwen3": "fp8-decoded"}


# ---------------------------------------------------------------------------------------------
# safetensors without a framework: (dtype, shape, raw bytes) per tensor.

NP_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F8_E4M3": "float8_e4m3fn",
             "U8": "uint8", "I32": "int32", "U32": "uint32", "I64": "int64"}


def np_dtype(name: str):
    import ml_dtypes

    attr = NP_DTYPES[name]
    return getattr(ml_dtypes, attr) if attr in ("bfloat16", "float8_e4m3fn") else np.dtype(attr)


def read_header(path: Path) -> tuple[bytes, dict]:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        text = f.read(n)
    return text, json.loads(text)


def read_tensors(path: Path) -> dict:
    """name -> numpy array (bfloat16 / float8 via ml_dtypes), in header order."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + b:8 + n + e], dtype=np_dtype(info["dtype"])).reshape(info["shape"])
    return out


def write_safetensors(path: Path, tensors: dict, metadata: dict | None = None, header_text: bytes | None = None):
    """tensors: name -> numpy array. header_text, when given, is written as is (it must describe
    exactly these tensors at these offsets): the materialized file then has the original header."""
    if header_text is None:
        header, offset = {}, 0
        if metadata:
            header["__metadata__"] = metadata
        inv = {v: k for k, v in NP_DTYPES.items()}
        for name, a in tensors.items():
            header[name] = {"dtype": inv[str(a.dtype)], "shape": list(a.shape),
                            "data_offsets": [offset, offset + a.nbytes]}
            offset += a.nbytes
        header_text = json.dumps(header, separators=(",", ":")).encode()
        header_text += b" " * (-len(header_text) % 8)
        order = list(tensors)
    else:
        header = json.loads(header_text)
        order = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(len(header_text).to_bytes(8, "little"))
        f.write(header_text)
        for name in order:
            f.write(np.ascontiguousarray(tensors[name]).tobytes())
    tmp.rename(path)


# ---------------------------------------------------------------------------------------------
# Fixtures.

def archs() -> list[str]:
    return sorted(p.name for p in ZOO.iterdir() if (p / "header.json").is_file())


def is_small(shape) -> bool:
    return len(shape) <= 1 or math.prod(shape) <= SMALL_ELEMENTS


def fixture_hash(arch: str) -> str:
    h = hashlib.sha256(f"fill {FILL_VERSION}\n".encode())
    for d in (ZOO / arch, TOKENIZER):
        for p in sorted(d.iterdir()):
            h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def fill(name: str, shape, dtype: str) -> np.ndarray:
    """normal(0, 0.02) seeded by the tensor name, rounded (to nearest even) to dtype."""
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    values = np.random.default_rng(seed).normal(0.0, 0.02, size=shape).astype(np.float32)
    return values.astype(np_dtype(dtype))


def load_fixture(arch: str) -> dict:
    d = ZOO / arch
    out = {"config": json.loads((d / "config.json").read_text()),
           "header_text": (d / "header.json").read_bytes()}
    out["header"] = json.loads(out["header_text"])
    gen = d / "generation_config.json"
    out["generation_config"] = gen.read_bytes() if gen.is_file() else None
    ac = d / "autoconfig.json"
    out["autoconfig"] = json.loads(ac.read_text()) if ac.is_file() else {}
    small = d / "small.safetensors"
    out["small"] = read_tensors(small) if small.is_file() else {}
    return out


def model_tensors(arch: str, fixture: dict | None = None) -> dict:
    fixture = fixture or load_fixture(arch)
    out = {}
    for name, info in fixture["header"].items():
        if name == "__metadata__":
            continue
        if name in fixture["small"]:
            out[name] = fixture["small"][name]
        else:
            out[name] = fill(name, info["shape"], info["dtype"])
    return out


# ---------------------------------------------------------------------------------------------
# The transformers-4 form of a config: what mlx-lm 0.32's ModelArgs reads.

def mlx_lm_classes(model_type: str, architectures=()):
    """mlx-lm's (Model, ModelArgs) for a model_type, resolving MODEL_REMAPPING as its loader does.
    A module that exits on import (olmo needs ai2-olmo) raises ImportError here."""
    from mlx_lm.utils import _get_classes

    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            return _get_classes({"model_type": model_type, "architectures": list(architectures or ())})
        except SystemExit:
            raise ImportError(f"mlx_lm.models for {model_type} exits on import: {out.getvalue().strip()}")


def required_fields(args_class) -> list[str]:
    import dataclasses

    return [f.name for f in dataclasses.fields(args_class)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]


def all_fields(args_class) -> list[str]:
    import dataclasses

    return [f.name for f in dataclasses.fields(args_class)]


# Model types transformers 5 writes for the text-only CausalLM of a multimodal family, which
# mlx-lm knows under the family's name (its module reads a flat text config too).
TEXT_ONLY_MODEL_TYPES = {"qwen3_5_text": "qwen3_5", "qwen3_5_moe_text": "qwen3_5_moe"}


def layer_period(c: dict) -> int | None:
    """The period of a layer_types list whose last layer of each period is full attention (the
    transformers-4 `sliding_window_pattern` / `full_attention_interval`)."""
    types = c.get("layer_types")
    if not isinstance(types, list) or "full_attention" not in types:
        return None
    return types.index("full_attention") + 1


def _exaone4(c):
    # mlx-lm reads EXAONE-4.0's pattern string ("LLLG": L = sliding, G = global), cycled over the
    # layers; transformers 5 writes an int period and layer_types.
    if isinstance(c.get("sliding_window_pattern"), int) and c.get("layer_types"):
        n = layer_period(c) or len(c["layer_types"])
        c["sliding_window_pattern"] = "".join("L" if t == "sliding_attention" else "G" for t in c["layer_types"][:n])


def _mimo_v2_flash(c):
    # transformers' MiMoV2FlashAttention: sliding layers have twice the kv heads and attention
    # sinks, full ones neither; its config reads sliding_window = sliding_window_size + 1; the
    # router is DeepSeek-V3's (sigmoid + e_score_correction_bias) without shared experts.
    types, mlp = c.get("layer_types", []), c.get("mlp_layer_types", [])
    swa = (c.get("rope_parameters") or {}).get("sliding_attention", {})
    c.setdefault("hybrid_layer_pattern", [1 if t == "sliding_attention" else 0 for t in types])
    c.setdefault("moe_layer_freq", [1 if t == "sparse" else 0 for t in mlp])
    c.setdefault("add_swa_attention_sink_bias", True)
    c.setdefault("add_full_attention_sink_bias", False)
    if c.get("sliding_window") is not None:
        c.setdefault("sliding_window_size", c["sliding_window"] - 1)
    c.setdefault("n_shared_experts", None)
    c.setdefault("topk_method", "noaux_tc")
    c.setdefault("scoring_func", "sigmoid")
    c.setdefault("layernorm_epsilon", c.get("rms_norm_eps"))
    c.setdefault("swa_rope_theta", swa.get("rope_theta", c.get("rope_theta")))
    c.setdefault("swa_num_attention_heads", c.get("num_attention_heads"))
    c.setdefault("swa_num_key_value_heads", 2 * c.get("num_key_value_heads", 0))
    c.setdefault("swa_head_dim", c.get("head_dim"))
    c.setdefault("swa_v_head_dim", c.get("v_head_dim"))


def _kimi_linear(c):
    # Kimi-Linear ships its KDA layers as linear_attn_config (1-based layer numbers), which
    # transformers 5 flattens into layer_types / linear_*; its MLA has no rotary embedding
    # (rope_theta is read by mlx-lm's ModelArgs but unused).
    types = c.get("layer_types", [])
    c.setdefault("linear_attn_config", {
        "kda_layers": [i + 1 for i, t in enumerate(types) if t == "linear_attention"],
        "full_attn_layers": [i + 1 for i, t in enumerate(types) if t == "full_attention"],
        "head_dim": c.get("linear_head_dim"), "num_heads": c.get("linear_num_heads"),
        "short_conv_kernel_size": c.get("linear_conv_kernel_dim", 4)})
    c.setdefault("rope_theta", 10000.0)


def _granitemoehybrid(c):
    # transformers 5 spells the layer kinds linear_attention / full_attention, mlx-lm (and
    # transformers 4) mamba / attention.
    names = {"linear_attention": "mamba", "full_attention": "attention"}
    if isinstance(c.get("layer_types"), list):
        c["layer_types"] = [names.get(t, t) for t in c["layer_types"]]


def _gpt_bigcode(c):
    # transformers' GPTBigCodeMLP: n_inner null means 4 * n_embd; mlx-lm needs the number.
    if c.get("n_inner") is None and c.get("n_embd"):
        c["n_inner"] = 4 * c["n_embd"]


def _minimax(c):
    # transformers' MiniMax / MiniMax-M2 have no shared expert and rotate head_dim *
    # partial_rotary_factor dims (released checkpoints name it rotary_dim).
    c.setdefault("shared_intermediate_size", 0)
    if c.get("head_dim"):
        c.setdefault("rotary_dim", int(c["head_dim"] * c.get("partial_rotary_factor", 1.0)))


# Per-arch rules for the fields mlx-lm's ModelArgs needs that neither config.json nor
# transformers' AutoConfig object carries, because the transformers-5 implementation hard-codes
# the behaviour or moved it elsewhere. Each states where the value comes from.
V4_DERIVED = {
    # transformers' Apertus: MLP without bias, q/k norms always; mlx-lm reads only mlp_bias.
    "apertus": lambda c: c.update({k: v for k, v in {"mlp_bias": False, "post_norm": False, "qk_norm": True}.items()
                                   if k not in c}),
    # mlx-lm's bailing_moe_v3 is transformers' BailingHybrid (KDA linear attention); mlx-lm picks
    # it by architectures (MODEL_ARCHITECTURE_REMAPPING), its bailing_hybrid is an older model.
    "bailing_hybrid": lambda c: c.update(architectures=["BailingMoeV3ForCausalLM"]),
    "exaone4": _exaone4,
    # transformers' ExaoneMoe: mlp_layer_types "sparse" layers are MoE.
    "exaone_moe": lambda c: c.setdefault("is_moe_layer", [t == "sparse" for t in c.get("mlp_layer_types", [])]),
    # transformers' GlmMoeDsa router is DeepSeek-V3's (sigmoid + e_score_correction_bias, i.e.
    # noaux_tc), every layer after first_k_dense_replace is MoE.
    "glm_moe_dsa": lambda c: c.update({k: v for k, v in {"topk_method": "noaux_tc", "scoring_func": "sigmoid",
                                                         "moe_layer_freq": 1}.items() if k not in c}),
    # GPT-2's context length: transformers 4 configs carried n_ctx = n_positions.
    "gpt2": lambda c: c.setdefault("n_ctx", c.get("n_positions")),
    "gpt_bigcode": _gpt_bigcode,
    # GPT-NeoX's transformers-4 names of rope_theta / partial_rotary_factor.
    "gpt_neox": lambda c: c.update({k: v for k, v in {"rotary_emb_base": c.get("rope_theta"),
                                                      "rotary_pct": c.get("partial_rotary_factor", 1.0)}.items()
                                    if k not in c}),
    "granitemoehybrid": _granitemoehybrid,
    "kimi_linear": _kimi_linear,
    # LFM2's block_dim is the hidden size (transformers 5 dropped the field).
    "lfm2": lambda c: c.setdefault("block_dim", c.get("hidden_size")),
    # transformers' LongcatFlash: MLA attention, zero experts are identities, q/kv LoRA outputs
    # scaled by sqrt(hidden / rank) (mla_scale_q_lora / mla_scale_kv_lora of the release).
    "longcat_flash": lambda c: c.update({k: v for k, v in {"attention_method": "MLA", "zero_expert_type": "identity",
                                                           "mla_scale_q_lora": True, "mla_scale_kv_lora": True}.items()
                                         if k not in c}),
    "mimo_v2_flash": _mimo_v2_flash,
    "minimax": _minimax,
    # transformers' SolarOpen: every layer MoE (no dense intermediate size), full rotary.
    "solar_open": lambda c: c.update({k: v for k, v in {"first_k_dense_replace": 0,
                                                        "intermediate_size": c.get("moe_intermediate_size"),
                                                        "partial_rotary_factor": 1.0}.items() if k not in c}),
}


def rope_dict(config: dict) -> dict | None:
    """The rope_parameters that apply to full attention: the dict itself, or for per-layer-type
    dicts ({"full_attention": {...}, "sliding_attention": {...}}) the full-attention one."""
    rope = config.get("rope_parameters")
    if not isinstance(rope, dict):
        return None
    if rope and all(isinstance(v, dict) for v in rope.values()):
        return rope.get("full_attention") or next(iter(rope.values()))
    return rope


def v4_config(config: dict, autoconfig: dict) -> tuple[dict, list[str]]:
    """The transformers-4 form of a transformers-5 config.json, and the fields still missing for
    mlx-lm's ModelArgs. Rules, in order (each only where the field is absent):
      1. model_type: a text-only type mlx-lm lacks -> the family's (TEXT_ONLY_MODEL_TYPES);
      2. torch_dtype <- dtype (mlx_lm.convert casts to torch_dtype);
      3. from the full-attention rope_parameters: rope_theta, partial_rotary_factor, and
         rope_scaling (the dict without rope_theta / partial_rotary_factor) when rope_type is not
         "default";
      4. num_experts <- num_local_experts;
      5. head_dim <- AutoConfig's head_dim, else hidden_size // num_attention_heads;
      6. the arch's own rules (V4_DERIVED, by mlx-lm model_type: fields whose meaning
         transformers 5 moved, e.g. gpt_neox rotary_pct, exaone_moe is_moe_layer);
      7. sliding_window_pattern / full_attention_interval where ModelArgs has the field: the
         period of layer_types (position of the first full_attention + 1);
      8. every field ModelArgs requires without a default: AutoConfig's attribute of that name,
         else the attribute it aliases (AutoConfig.attribute_map, e.g. exaone's num_layers ->
         num_hidden_layers). What is still missing is returned (mlx_lm.convert will fail)."""
    c = json.loads(json.dumps(config))
    c["model_type"] = TEXT_ONLY_MODEL_TYPES.get(c.get("model_type"), c.get("model_type"))
    if "dtype" in c and "torch_dtype" not in c:
        c["torch_dtype"] = c["dtype"]
    rope = rope_dict(c)
    if rope:
        if "rope_theta" in rope:
            c.setdefault("rope_theta", rope["rope_theta"])
        if "partial_rotary_factor" in rope:
            c.setdefault("partial_rotary_factor", rope["partial_rotary_factor"])
        if rope.get("rope_type", "default") != "default" and not c.get("rope_scaling"):
            c["rope_scaling"] = {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor")}
    if "num_local_experts" in c:
        c.setdefault("num_experts", c["num_local_experts"])
    if "head_dim" not in c:
        if autoconfig.get("head_dim") is not None:
            c["head_dim"] = autoconfig["head_dim"]
        elif "hidden_size" in c and c.get("num_attention_heads"):
            c["head_dim"] = c["hidden_size"] // c["num_attention_heads"]
    from mlx_lm.utils import MODEL_REMAPPING

    model_type = MODEL_REMAPPING.get(c["model_type"], c["model_type"])
    if model_type in V4_DERIVED:
        V4_DERIVED[model_type](c)
    missing = []
    try:
        _, args_class = mlx_lm_classes(c["model_type"], c.get("architectures"))
    except (ImportError, ValueError):
        return c, missing
    fields = all_fields(args_class)
    period = layer_period(c)
    for field in ("sliding_window_pattern", "full_attention_interval"):
        if (field in fields or "text_config" in fields) and field not in c and period:
            c[field] = period
    aliases = autoconfig.get("attribute_map") or {}
    for field in required_fields(args_class):
        if field in c or field == "text_config":  # text_config: modules that read a flat config
            continue
        if autoconfig.get(field) is not None:
            c[field] = autoconfig[field]
        elif field in aliases and (autoconfig.get(aliases[field]) is not None or c.get(aliases[field]) is not None):
            alias = aliases[field]
            c[field] = autoconfig[alias] if autoconfig.get(alias) is not None else c[alias]
        else:
            missing.append(field)
    return c, missing


def trim_autoconfig(config: dict, autoconfig: dict) -> dict:
    """What v4_config may read: ModelArgs fields (required or not) that config.json lacks or
    holds with another value, head_dim, and attribute_map."""
    model_type = TEXT_ONLY_MODEL_TYPES.get(config.get("model_type"), config.get("model_type"))
    try:
        _, args_class = mlx_lm_classes(model_type, config.get("architectures"))
        fields = set(all_fields(args_class))
    except (ImportError, ValueError):
        fields = set()
    aliases = autoconfig.get("attribute_map") or {}
    fields |= {"head_dim"} | {aliases[f] for f in fields if f in aliases}
    out = {k: autoconfig[k] for k in sorted(fields) if k in autoconfig and config.get(k) != autoconfig[k]}
    if aliases:
        out["attribute_map"] = aliases
    return out


def import_raw(raw: Path, names: list[str]):
    for arch in names:
        src, dst = raw / arch, ZOO / arch
        dst.mkdir(parents=True, exist_ok=True)
        config = json.loads((src / "config.json").read_text())
        shutil.copyfile(src / "config.json", dst / "config.json")
        if (src / "generation_config.json").is_file():
            shutil.copyfile(src / "generation_config.json", dst / "generation_config.json")
        header_text, header = read_header(src / "model.safetensors")
        (dst / "header.json").write_bytes(header_text)
        tensors = read_tensors(src / "model.safetensors")
        small = {k: v for k, v in tensors.items() if is_small(v.shape)}
        write_safetensors(dst / "small.safetensors", small)
        if (src / "autoconfig.json").is_file():
            trimmed = trim_autoconfig(config, json.loads((src / "autoconfig.json").read_text()))
            (dst / "autoconfig.json").write_text(json.dumps(trimmed, indent=1, sort_keys=True) + "\n")
        print(f"{arch}: {len(small)}/{len(tensors)} tensors kept exactly")


def write_tokenizer(source: Path, vocab_size: int = 320):
    """The zoo tokenizer: tiny-llama's byte-level BPE cut to the ids below vocab_size (the
    special tokens and the 256 bytes come first) and the merges whose parts and result are kept."""
    tok = json.loads((source / "tokenizer.json").read_text())
    vocab = {t: i for t, i in tok["model"]["vocab"].items() if i < vocab_size}
    merges = []
    for m in tok["model"]["merges"]:
        a, b = m if isinstance(m, list) else m.split(" ", 1)
        if a in vocab and b in vocab and a + b in vocab:
            merges.append(m)
    tok["model"]["vocab"] = vocab
    tok["model"]["merges"] = merges
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["id"] < vocab_size]
    TOKENIZER.mkdir(parents=True, exist_ok=True)
    (TOKENIZER / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False, indent=1) + "\n")
    shutil.copyfile(source / "tokenizer_config.json", TOKENIZER / "tokenizer_config.json")


# ---------------------------------------------------------------------------------------------
# Materialized model directories (cache).

FP8_BLOCK = 128
# Block-FP8 checkpoints (DeepSeek-V3, Qwen3-FP8) store the projection weights of the decoder
# layers in E4M3; embeddings, lm_head, norms and routers stay BF16.
FP8_WEIGHT = re.compile(r"^model\.layers\.\d+\..*_proj(_with_mqa)?\.weight$")


def fp8_encode(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per 128x128 block: scale = amax / 448 (F32), codes = e4m3(w / scale) (round to nearest)."""
    import ml_dtypes

    w = w.astype(np.float32)
    m, n = w.shape
    rows, cols = -(-m // FP8_BLOCK), -(-n // FP8_BLOCK)
    scale = np.zeros((rows, cols), np.float32)
    codes = np.zeros_like(w)
    for i in range(rows):
        for j in range(cols):
            blk = w[i * FP8_BLOCK:(i + 1) * FP8_BLOCK, j * FP8_BLOCK:(j + 1) * FP8_BLOCK]
            s = np.float32(max(float(np.abs(blk).max()), 1e-12) / 448.0)
            scale[i, j] = s
            codes[i * FP8_BLOCK:(i + 1) * FP8_BLOCK, j * FP8_BLOCK:(j + 1) * FP8_BLOCK] = blk / s
    return codes.astype(ml_dtypes.float8_e4m3fn), scale


def fp8_decode(codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The reference decode, bf16(e4m3(W) * S[i//128, j//128]) in float32 (MLX's from_fp8)."""
    import ml_dtypes

    w = codes.astype(np.float32)
    s = np.repeat(np.repeat(scale, FP8_BLOCK, 0), FP8_BLOCK, 1)[: w.shape[0], : w.shape[1]]
    return (w * s).astype(ml_dtypes.bfloat16)


FP8_QUANTIZATION_CONFIG = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                           "weight_block_size": [FP8_BLOCK, FP8_BLOCK]}


def materialize(arch: str, form: str = "v5") -> Path:
    """A complete model directory of the arch in the cache, written once per fixture hash:
      v5           the checkpoint as transformers wrote it (stquant's input)
      v4           the same with the transformers-4 config (mlx_lm.convert's input)
      fp8 / fp8-v4 the block-FP8 variant (F8_E4M3 weights + F32 weight_scale_inv per 128x128)
      fp8-decoded  the FP8 variant decoded to BF16 by the reference formula, v4 config."""
    fixture = load_fixture(arch)
    config = fixture["config"]
    if form in ("fp8", "fp8-v4"):
        config = dict(config, quantization_config=FP8_QUANTIZATION_CONFIG)
    if form in ("v4", "fp8-v4", "fp8-decoded"):
        config, _ = v4_config(config, fixture["autoconfig"])
    config_text = json.dumps(config, indent=2) + "\n"
    # The directory is named by the config too: a change of the v4 rules makes a new one.
    config_hash = hashlib.sha256(config_text.encode()).hexdigest()[:8]
    d = CACHE / "models" / f"{arch}-{fixture_hash(arch)}" / f"{form}-{config_hash}"
    if (d / "config.json").is_file():
        return d
    tmp = Path(tempfile.mkdtemp(dir=d.parent if d.parent.is_dir() else _mkdir(d.parent)))
    if form == "v4":
        os.link(materialize(arch, "v5") / "model.safetensors", tmp / "model.safetensors")
    elif form == "v5":
        write_safetensors(tmp / "model.safetensors", model_tensors(arch, fixture), header_text=fixture["header_text"])
    else:
        tensors = model_tensors(arch, fixture)
        out = {}
        for name, value in tensors.items():
            if FP8_WEIGHT.match(name) and value.ndim == 2:
                codes, scale = fp8_encode(value)
                if form == "fp8-decoded":
                    out[name] = fp8_decode(codes, scale)
                else:
                    out[name], out[name + "_scale_inv"] = codes, scale
            else:
                out[name] = value
        write_safetensors(tmp / "model.safetensors", out, metadata=fixture["header"].get("__metadata__"))
    (tmp / "config.json").write_text(config_text)
    if fixture["generation_config"] is not None:
        (tmp / "generation_config.json").write_bytes(fixture["generation_config"])
    for p in TOKENIZER.iterdir():
        shutil.copyfile(p, tmp / p.name)
    try:
        tmp.rename(d)
    except OSError:  # written meanwhile by another worker
        shutil.rmtree(tmp)
    return d


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


# ---------------------------------------------------------------------------------------------
# The reference: mlx_lm.convert on the v4 form, cached.

def mlx_lm_version() -> str:
    import mlx_lm

    return mlx_lm.__version__


def short_error(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())[:300]


def greedy_tokens(model_dir: Path, n: int = N_TOKENS) -> list[int]:
    """mlx_lm.load + n greedy tokens. Where the model does not run in its dtype on the CPU
    (MLX's CPU gather_mm, used by unquantized stacked experts, supports float32 only), its
    floating parameters are cast to float32 and it runs again."""
    import mlx.core as mx
    from mlx_lm import load, stream_generate

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        model, tokenizer = load(str(model_dir))
        try:
            return [r.token for r in stream_generate(model, tokenizer, PROMPT, max_tokens=n)]
        except RuntimeError as e:
            if "only supports float32" not in str(e):
                raise
            model.set_dtype(mx.float32)
            return [r.token for r in stream_generate(model, tokenizer, PROMPT, max_tokens=n)]


def run_mlx_lm_convert(src: Path, dst: Path, type_name: str):
    from mlx_lm import convert

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        convert(str(src), str(dst), **TYPES[type_name][1])


def reference(arch: str, type_name: str, form: str = "v4") -> dict:
    """mlx_lm.convert of the arch's `form` directory with the type, cached: {"dir", "ok",
    "error", "stage", "tokens"}; stage is where it failed (convert / generate)."""
    src = materialize(arch, form)
    key = hashlib.sha256(json.dumps([arch, form, type_name, fixture_hash(arch), (src / "config.json").read_text(),
                                     mlx_lm_version(), REFERENCE_VERSION]).encode()).hexdigest()[:16]
    d = CACHE / "ref" / arch / f"{form}-{type_name}-{key}"
    result_file = d / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    result = {"dir": str(d / "out"), "ok": False, "error": None, "stage": "convert", "tokens": None}
    t0 = time.time()
    try:
        run_mlx_lm_convert(src, d / "out", type_name)
        result["stage"] = "generate"
        result["tokens"] = greedy_tokens(d / "out")
        result["ok"], result["stage"] = True, None
    except BaseException as e:  # noqa: B036 -- model modules may sys.exit on import
        if isinstance(e, KeyboardInterrupt):
            raise
        result["error"] = short_error(e)
    result["seconds"] = round(time.time() - t0, 2)
    result_file.write_text(json.dumps(result, indent=1))
    return result


# ---------------------------------------------------------------------------------------------
# stquant's output and the comparison.

def stquant_binary() -> Path:
    build = Path(os.environ.get("STQUANT_BUILD_DIR", REPO / "build"))
    return (build if build.is_absolute() else REPO / build) / "stquant"


def run_stquant(src: Path, out: Path, type_name: str, extra=()) -> subprocess.CompletedProcess:
    return subprocess.run([str(stquant_binary()), "convert", str(src), "-o", str(out), "--quiet", "--force",
                           *TYPES[type_name][0], *extra], capture_output=True, text=True)


def load_outputs(directory: Path) -> tuple[dict, dict]:
    """name -> (dtype, shape, raw bytes) over every shard, and config.json."""
    tensors = {}
    for shard in sorted(directory.glob("*.safetensors")):
        data = shard.read_bytes()
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + n])
        for name, info in header.items():
            if name != "__metadata__":
                b, e = info["data_offsets"]
                tensors[name] = (info["dtype"], tuple(info["shape"]), data[8 + n + b:8 + n + e])
    return tensors, json.loads((directory / "config.json").read_text())


def normalize_quantization(q):
    """mlx-lm writes "group_size": null in per-layer entries when no group size is given (its
    loader then uses the default); stquant writes the group size it used."""
    if not isinstance(q, dict):
        return q
    out = {}
    for key, value in q.items():
        if isinstance(value, dict) and "group_size" in value and value["group_size"] is None:
            value = dict(value, group_size=q.get("group_size"))
        out[key] = value
    return out


QUANT_SUFFIXES = (".scales", ".biases", ".global_scale")


def pattern(name: str) -> str:
    """A tensor name with its layer / expert indices as N, to group differences."""
    return re.sub(r"\.\d+(?=\.|$)", ".N", name)


def group_names(names) -> list[str]:
    counts = {}
    for n in sorted(names):
        counts[pattern(n)] = counts.get(pattern(n), 0) + 1
    return [f"{p} (x{c})" if c > 1 else p for p, c in counts.items()]


def compare_dirs(ours: Path, theirs: Path) -> list[dict]:
    """The differences of two mlx-lm model directories, each {"class", "detail", "names"}:
      names      tensors in one output only (quantization companions listed with their weight)
      quantized  a module quantized in one output and kept in the other
      qparams    a module quantized in both with another mode or bits (companions or shapes differ)
      dtype, shape, bytes   of the other tensors both have
      config     the quantization blocks (quantization_config only where it is not a copy)
      args       mlx-lm's ModelArgs built from each config.json (what the model is made of)"""
    a, ca = load_outputs(ours)
    b, cb = load_outputs(theirs)
    diffs = []

    def companions(t, m):
        return tuple(s for s in QUANT_SUFFIXES if m + s in t)

    modules = {n[:-len(".weight")] for n in a if n.endswith(".weight") and n in b}
    q_a, q_b, q_params = [], [], []
    for m in sorted(modules):
        sa, sb = companions(a, m), companions(b, m)
        if ".scales" in sa and ".scales" not in sb:
            q_a.append(m)
        elif ".scales" in sb and ".scales" not in sa:
            q_b.append(m)
        elif sa and (sa != sb or any(a[m + x][:2] != b[m + x][:2] for x in sa + (".weight",))):
            q_params.append((m, f"stquant {describe_quantized(ca, m)} vs mlx-lm {describe_quantized(cb, m)}"))
    for items, detail in ((q_a, "stquant quantizes, mlx-lm keeps"), (q_b, "mlx-lm quantizes, stquant keeps")):
        if items:
            diffs.append({"class": "quantized", "detail": detail, "names": group_names(m + ".weight" for m in items)})
    if q_params:
        diffs.append({"class": "qparams", "detail": "quantized in both, another mode or bits",
                      "names": group_pairs(q_params)})
    handled = {m + x for m in q_a + q_b + [m for m, _ in q_params] for x in QUANT_SUFFIXES + (".weight",)}
    only_a, only_b = set(a) - set(b) - handled, set(b) - set(a) - handled
    # A weight in one output only: its quantization companions are listed with it, not apart.
    only_a = {n for n in only_a if not (n.endswith(QUANT_SUFFIXES) and n.rsplit(".", 1)[0] + ".weight" in only_a)}
    only_b = {n for n in only_b if not (n.endswith(QUANT_SUFFIXES) and n.rsplit(".", 1)[0] + ".weight" in only_b)}
    if only_a:
        diffs.append({"class": "names", "detail": "only in stquant's output", "names": group_names(only_a)})
    if only_b:
        diffs.append({"class": "names", "detail": "only in mlx-lm's output", "names": group_names(only_b)})
    by_class = {"dtype": [], "shape": [], "bytes": []}
    for n in sorted(set(a) & set(b) - handled):
        (da, sa, xa), (db, sb, xb) = a[n], b[n]
        if da != db:
            by_class["dtype"].append(f"{n}: {da} vs {db}")
        elif sa != sb:
            by_class["shape"].append(f"{n}: {list(sa)} vs {list(sb)}")
        elif xa != xb:
            by_class["bytes"].append(n)
    for cls, items in by_class.items():
        if items:
            names = group_names(items) if cls == "bytes" else items
            detail = {"dtype": "dtype differs (stquant vs mlx-lm)", "shape": "shape differs (stquant vs mlx-lm)",
                      "bytes": "same dtype and shape, bytes differ"}[cls]
            diffs.append({"class": cls, "detail": detail, "names": names})
    qa, qb = normalize_quantization(ca.get("quantization")), normalize_quantization(cb.get("quantization"))
    if qa != qb:
        diffs.append({"class": "config", "detail": "quantization differs", "names": config_diff(qa, qb)})
    qca, qcb = normalize_quantization(ca.get("quantization_config")), normalize_quantization(cb.get("quantization_config"))
    if qca != qcb and (qca != qa or qcb != qb):
        diffs.append({"class": "config", "detail": "quantization_config differs", "names": config_diff(qca, qcb)})
    ma, mb = model_args(ca), model_args(cb)
    # head_dim null means hidden_size // num_attention_heads to every mlx-lm model.
    for x, y in ((ma, mb), (mb, ma)):
        if x.get("head_dim") is None and y.get("head_dim") and y.get("num_attention_heads") and \
                y["head_dim"] == (y.get("hidden_size") or 0) // y["num_attention_heads"]:
            x["head_dim"] = y["head_dim"]
    args = config_diff(ma, mb)
    if args:
        diffs.append({"class": "args", "detail": "mlx-lm's ModelArgs of the two config.json differ", "names": args})
    return diffs


def describe_quantized(config: dict, m: str) -> str:
    """A module's quantization as its config.json records it: the per-layer entry, else the global."""
    q = config.get("quantization") or {}
    e = q.get(m) if isinstance(q.get(m), dict) else q
    return f"{e.get('mode', 'affine')} {e.get('bits')}-bit g{e.get('group_size') or q.get('group_size')}"


def group_pairs(pairs) -> list[str]:
    """(name, text) pairs as "pattern (xK): text", one line per pattern and text."""
    counts = {}
    for name, text in pairs:
        key = (pattern(name), text)
        counts[key] = counts.get(key, 0) + 1
    return [f"{p}{f' (x{c})' if c > 1 else ''}: {t}" for (p, t), c in counts.items()]


def model_args(config: dict):
    """mlx-lm's ModelArgs of a config.json as a dict (after its __post_init__), or the error."""
    import dataclasses

    try:
        _, args_class = mlx_lm_classes(config.get("model_type", ""), config.get("architectures"))
        args = args_class.from_dict(config)
    except BaseException as e:  # noqa: B036
        if isinstance(e, KeyboardInterrupt):
            raise
        return {"(error)": short_error(e)}
    out = {}
    for f in dataclasses.fields(args):
        v = getattr(args, f.name)
        if dataclasses.is_dataclass(v):
            v = dataclasses.asdict(v)
        out[f.name] = json.loads(json.dumps(v, default=str))
    return out


def config_diff(a, b) -> list[str]:
    if not isinstance(a, dict) or not isinstance(b, dict):
        return [f"stquant {json.dumps(a)} vs mlx-lm {json.dumps(b)}"]
    if "(error)" in a or "(error)" in b:  # ModelArgs could not be built from one of them
        return [f"{who}: {x['(error)']}" for who, x in (("stquant", a), ("mlx-lm", b)) if "(error)" in x]
    return group_pairs((k, f"stquant {json.dumps(a.get(k))} vs mlx-lm {json.dumps(b.get(k))}")
                       for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))


def check(arch: str, type_name: str, variant: str = "", keep: Path | None = None) -> dict:
    """One arch x type: stquant convert of the v5 form (variant "fp8": the block-FP8 form) against
    the reference. Result: {"arch", "type", "variant", "reference": {...}, "stquant": "ok" |
    "refused" | "failed", "stquant_error", "diffs", "tokens": [ours], "ref_tokens", "verdict"}."""
    if variant == "fp8":
        src, ref_form = materialize(arch, "fp8"), ("fp8-v4" if FP8_VARIANTS[arch] == "fp8" else "fp8-decoded")
    else:
        src, ref_form = materialize(arch, "v5"), "v4"
    ref = reference(arch, type_name, ref_form)
    r = {"arch": arch, "type": type_name, "variant": variant, "reference": ref, "stquant": None,
         "stquant_error": None, "diffs": [], "tokens": None, "verdict": None}
    work = Path(tempfile.mkdtemp(prefix=f"zoo-{arch}-{type_name}-"))
    out = (keep or work) / f"stquant-{arch}{'-' + variant if variant else ''}-{type_name}"
    try:
        t0 = time.time()
        proc = run_stquant(src, out, type_name)
        r["stquant_seconds"] = round(time.time() - t0, 2)
        if proc.returncode != 0:
            r["stquant"] = "refused" if proc.returncode == 2 else "failed"
            r["stquant_error"] = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:300]
            r["verdict"] = "stquant refused" if r["stquant"] == "refused" else "stquant failed"
            return r
        r["stquant"] = "ok"
        if ref["ok"] or ref["stage"] == "generate":
            r["diffs"] = compare_dirs(out, Path(ref["dir"]))
        try:
            r["tokens"] = greedy_tokens(out)
        except BaseException as e:  # noqa: B036
            if isinstance(e, KeyboardInterrupt):
                raise
            r["load_error"] = short_error(e)
        if not ref["ok"] and ref["stage"] == "convert":
            r["verdict"] = "reference failed; stquant output " + (
                "loads and generates" if r["tokens"] is not None else "does not load: " + r["load_error"])
        elif not ref["ok"]:
            r["verdict"] = "reference does not generate; " + ("identical" if not r["diffs"] else "differs")
        elif r["tokens"] is None:
            r["diffs"].append({"class": "load", "detail": "stquant's output does not load in mlx-lm",
                               "names": [r["load_error"]]})
            r["verdict"] = "differs"
        else:
            if r["tokens"] != ref["tokens"]:
                r["diffs"].append({"class": "tokens", "detail": "greedy tokens differ",
                                   "names": [f"stquant {r['tokens']} vs mlx-lm {ref['tokens']}"]})
            r["verdict"] = "differs" if r["diffs"] else "identical"
        return r
    finally:
        shutil.rmtree(work, ignore_errors=True)


def acceptable(r: dict) -> bool:
    """What the issue asks of each check: stquant refuses (exit 2), or its output is identical to
    the reference with equal tokens; where mlx_lm.convert fails, stquant's output loads and
    generates; where the reference converts but does not run, the tensors are identical."""
    v = r["verdict"]
    if v == "stquant refused" or v == "identical":
        return True
    if v.startswith("reference failed"):
        return r.get("tokens") is not None
    if v.startswith("reference does not generate"):
        return not r["diffs"]
    return False


def describe(r: dict) -> str:
    head = f"{r['arch'] + ('-' + r['variant'] if r['variant'] else ''):24} {r['type']:6} "
    if r["verdict"] == "identical":
        return head + "identical"
    if r["verdict"].startswith("stquant"):
        return head + f"{r['verdict']}: {r['stquant_error']}"
    if r["verdict"].startswith("reference failed"):
        return head + f"{r['verdict'][:200]} (mlx_lm.convert: {r['reference']['error'][:200]})"
    if not r["diffs"]:
        return head + r["verdict"]
    d = r["diffs"][0]
    return head + f"{r['verdict']}: {d['class']}: {d['detail']}: {d['names'][0]}" + (
        f" (+{len(r['diffs']) - 1} more classes)" if len(r["diffs"]) > 1 else "")


def check_ollama(arch: str, type_name: str = "int4") -> dict:
    """--layout ollama of the v5 form: the store reads back (tests/python/test_ollama_store.py's
    reader) and every quantized tensor equals pip mx.quantize of the source values with the
    blob's mode and group size, every other tensor its source bytes."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_ollama_store import check_model

    src = materialize(arch, "v5")
    r = {"arch": arch, "type": "ollama-" + type_name, "variant": "", "diffs": [], "stquant_error": None}
    with tempfile.TemporaryDirectory(prefix=f"zoo-ollama-{arch}-") as store:
        proc = subprocess.run([str(stquant_binary()), "convert", str(src), "--layout", "ollama", "--name",
                               f"zoo/{arch}", "--models-dir", store, "--quiet", "-q", type_name],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            r["stquant"] = "refused" if proc.returncode == 2 else "failed"
            r["stquant_error"] = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:300]
            r["verdict"] = f"stquant {r['stquant']}"
            return r
        r["stquant"] = "ok"
        try:
            _, quant = check_model(Path(store), f"zoo/{arch}", src)
            r["quantized"] = len(quant)
            r["verdict"] = "identical" if quant else "differs"
            if not quant:
                r["diffs"].append({"class": "ollama", "detail": "nothing quantized", "names": [""]})
        except BaseException as e:  # noqa: B036
            if isinstance(e, KeyboardInterrupt):
                raise
            r["verdict"] = "differs"
            r["diffs"].append({"class": "ollama", "detail": "store check failed", "names": [short_error(e)]})
    return r


def run_arch(arch: str, types: list[str], fp8: bool, ollama: bool):
    """Every check of one arch, one result (dict) at a time."""
    for t in types:
        yield check(arch, t)
    if fp8 and arch in FP8_VARIANTS:
        for t in types:
            yield check(arch, t, variant="fp8")
    if ollama:
        yield check_ollama(arch)


def run_worker(arch: str, types: list[str], fp8: bool, ollama: bool, timeout: float):
    """run_arch in a child process (a model module may exit or crash the interpreter)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "_worker", arch, "--types", ",".join(types)]
    cmd += (["--fp8"] if fp8 else []) + (["--ollama"] if ollama else [])
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), time.time() + timeout


def summarize(results: list[dict]) -> list[str]:
    lines = []
    by_type = {}
    for r in results:
        key = r["type"] + (" (" + r["variant"] + ")" if r["variant"] else "")
        by_type.setdefault(key, []).append(r)
    for key, rs in by_type.items():
        counts = {}
        for r in rs:
            v = r["verdict"].split(";")[0].split(":")[0]
            counts[v] = counts.get(v, 0) + 1
        lines.append(f"{key:14} {len(rs)} archs: "
                     + (f"mlx_lm.convert converts / and runs {ref_counts(rs)}; " if "reference" in rs[0] else "")
                     + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return lines


def cmd_check(args) -> int:
    names = args.archs or (DEFAULT_SUBSET if args.subset else archs())
    unknown = [a for a in names if a not in archs()]
    if unknown:
        print(f"zoo-check: error: unknown arch {', '.join(unknown)} (see tests/zoo/)", file=sys.stderr)
        return 2
    types = args.types.split(",")
    if not stquant_binary().is_file():
        print(f"zoo-check: error: {stquant_binary()} does not exist (build it, or set STQUANT_BUILD_DIR)", file=sys.stderr)
        return 2
    t0 = time.time()
    pending, running, results = list(names), [], []
    while pending or running:
        while pending and len(running) < args.jobs:
            arch = pending.pop(0)
            running.append((arch, *run_worker(arch, types, args.fp8, args.ollama, args.timeout)))
        time.sleep(0.05)
        for item in list(running):
            arch, proc, deadline = item
            if proc.poll() is None and time.time() < deadline:
                continue
            if proc.poll() is None:
                proc.kill()
            out, err = proc.communicate()
            got = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
            if proc.returncode != 0 and not got:
                why = "timed out" if time.time() >= deadline else (err.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
                got = [{"arch": arch, "type": t, "variant": "", "verdict": "harness failed", "diffs": [],
                        "stquant_error": why[:300]} for t in types]
            for r in got:
                print(describe(r) if r["verdict"] != "harness failed" else f"{arch:24} {r['type']:6} harness failed: {r['stquant_error']}", flush=True)
            results += got
            running.remove(item)
    print(f"--- {len(names)} archs, {len(results)} checks in {time.time() - t0:.0f} s")
    for line in summarize(results):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps({"mlx_lm": mlx_lm_version(), "results": results}, indent=1) + "\n")
    return 0 if all(r["verdict"] == "identical" for r in results) else 1


def cmd_worker(args) -> int:
    for r in run_arch(args.arch, args.types.split(","), args.fp8, args.ollama):
        print(json.dumps(r), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# The status report (markdown) from the results of `check --json`.

# Why mlx_lm.convert cannot convert an arch's v4 form, and what would make it usable; by arch.
REFERENCE_NOTES = {
    "bailing_hybrid": "zoo config unreadable by transformers 5.25 itself (expert_swiglu_limit_list / "
                      "share_expert_swiglu_limit_list keep 42 entries for 2 layers: no autoconfig.json); "
                      "transformers' BailingHybrid is mlx-lm's bailing_moe_v3 (picked by architectures "
                      "BailingMoeV3ForCausalLM), whose names differ (attention.* of the KDA layers)",
    "bitnet": "mlx-lm's bitnet reads only the packed ternary release (weight_scale per projection); a "
              "bf16 BitNet is not an mlx-lm input",
    "deepseek_v2": "mlx-lm's deepseek_v2 reads rope_scaling['factor'] unconditionally (YaRN): the zoo "
                   "uses default RoPE; DeepSeek-V2(-Lite) ships YaRN",
    "gpt2": "mlx-lm's gpt2 sanitize expects the GPT2Model names (h.N.*), transformers' GPT2LMHeadModel "
            "writes transformer.h.N.*",
    "gpt_neox": "mlx-lm's gpt_neox hard-codes the MLP as 4 * hidden_size; the zoo has intermediate_size "
                "128 = 2 * hidden_size",
    "gpt_oss": "mlx-lm's gpt_oss sanitize reads the MXFP4 release (gate_up_proj_blocks); the bf16 form "
               "(experts.gate_up_proj [E, hidden, 2I]) is split on the wrong axis and left without .weight",
    "jamba": "shrinking left attn_layer_period 8 / offset 4 for 2 layers: no attention layer, which "
             "mlx-lm's jamba requires",
    "kimi_linear": "the zoo's MLA has q_lora_rank 64 (q_a_proj / q_b_proj), mlx-lm's kimi_linear only "
                   "q_proj (Kimi-Linear ships q_lora_rank null); dense layer names differ "
                   "(block_sparse_moe.*_proj)",
    "lfm2": "shrinking kept only full-attention layers (layer_types, and full_attn_idxs 0..31): "
            "mlx-lm's lfm2 needs a conv layer",
    "llama4": "mlx-lm runs Llama 4 MoE only as the multimodal checkpoint (model_type llama4, text_config, "
              "language_model.* names); its llama4_text is a dense tied model. transformers' text-only "
              "Llama4ForCausalLM form has no mlx-lm reader",
    "llama4_text": "as llama4",
    "minicpm3": "mlx-lm's minicpm3 always builds LongRoPE from rope_scaling (short/long factors): the zoo "
                "uses default RoPE; MiniCPM3 ships longrope",
    "minimax": "the zoo is MiniMax-Text-01 (lightning linear-attention layers); mlx-lm's minimax is "
               "MiniMax-M2 (full attention only)",
    "nanochat": "mlx-lm's nanochat reads the original nanochat names (no sanitize for transformers' "
                "model.layers.N.mlp.fc1 / self_attn.*)",
    "nemotron_h": "shrinking left layers_block_type [mamba, moe]: mlx-lm's nemotron_h needs an attention "
                  "layer (its mask is built from the first one)",
    "olmo": "mlx-lm's olmo is the original OLMo format (needs the ai2-olmo package, d_model / n_layers); "
            "transformers' Olmo is not an mlx-lm input",
    "olmo_hybrid": "transformers 5.25 names the linear layers' norms attention_layer_norm / "
                   "feedforward_layer_norm; mlx-lm 0.32.2's olmo_hybrid input_layernorm / "
                   "post_attention_layernorm",
    "phimoe": "mlx-lm's phimoe hard-codes attention and lm_head biases; the zoo has attention_bias "
              "false (Phi-3.5-MoE ships attention_bias and lm_head_bias true)",
    "qwen3_5_moe": "mlx-lm's qwen3_5_moe stacks only the fused release form (experts.gate_up_proj / "
                   "experts.down_proj); transformers 5.25 writes per-expert tensors",
    "smollm3": "shrinking left no_rope_layers with 36 entries for 2 layers",
}

# Zoo entries whose shrunken config defeats the comparison: the config overrides to give
# make_arch_zoo.py (SMALL / shrink) when the raw zoo is written again, and why.
REGENERATE = {
    "bailing_hybrid": ({"expert_swiglu_limit_list": [0, 0], "share_expert_swiglu_limit_list": [0, 0],
                        "linear_num_heads": 2, "linear_head_dim": 32},
                       "lists must have one entry per layer (transformers refuses the config); KDA left unshrunk"),
    "deepseek_v2": ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0,
                                         "original_max_position_embeddings": 4096, "beta_fast": 32.0,
                                         "beta_slow": 1.0, "mscale": 0.707, "mscale_all_dim": 0.707}},
                    "DeepSeek-V2(-Lite)'s YaRN; mlx-lm's deepseek_v2 requires rope_scaling"),
    "minicpm3": ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 8,
                                      "long_factor": [1.0] * 8, "original_max_position_embeddings": 256}},
                 "MiniCPM3's LongRoPE (qk_rope_head_dim / 2 = 8 factors); mlx-lm's minicpm3 requires it"),
    "gpt_neox": ({"intermediate_size": 256}, "mlx-lm's gpt_neox hard-codes 4 * hidden_size"),
    "jamba": ({"attn_layer_period": 2, "attn_layer_offset": 1}, "no attention layer among 2 layers"),
    "kimi_linear": ({"q_lora_rank": None, "linear_num_heads": 2, "linear_head_dim": 32},
                    "Kimi-Linear has no q LoRA (mlx-lm reads q_proj); KDA left unshrunk"),
    "lfm2": ({"layer_types": ["conv", "full_attention"], "full_attn_idxs": [1]}, "no conv layer"),
    "granitemoehybrid": ({"layer_types": ["linear_attention", "full_attention"]},
                         "transformers' default is every layer mamba: no attention layer"),
    "nemotron_h": ({"num_hidden_layers": 3, "layers_block_type": ["linear_attention", "full_attention", "moe"],
                    "mamba_num_heads": 4, "moe_shared_expert_intermediate_size": 64},
                   "no attention layer among 2 (mlx-lm needs one); mamba heads and shared expert unshrunk"),
    "phimoe": ({"attention_bias": True, "lm_head_bias": True},
               "Phi-3.5-MoE's biases, which mlx-lm's phimoe hard-codes"),
    "smollm3": ({"no_rope_layers": [1, 0]}, "no_rope_layers kept 36 entries for 2 layers"),
    "glm_moe_dsa": ({"indexer_types": ["full", "full"]}, "indexer_types kept 78 entries for 2 layers"),
    "qwen3": ({"intermediate_size": 320},
              "the block-FP8 variant: weights spanning several 128x128 blocks with a partial last one"),
    "deepseek_v3": ({"intermediate_size": 320, "moe_intermediate_size": 192, "num_attention_heads": 4},
                    "the block-FP8 variant: MLP, experts and kv_b_proj (4 x 48 = 192 rows) over several "
                    "128-blocks, the last partial"),
}

TYPE_COLUMNS = list(TYPES) + ["ollama-int4"]


def cell(r: dict | None) -> str:
    if r is None:
        return ""
    v = r["verdict"]
    if v == "identical":
        return "="
    if v.startswith("stquant refused"):
        return "refused"
    if v.startswith("stquant failed") or v == "harness failed":
        return "FAILED"
    if v.startswith("reference failed"):
        return "ref ✗, loads" if r.get("tokens") is not None else "ref ✗, no load"
    classes = ",".join(sorted({d["class"] for d in r["diffs"]}))
    if v.startswith("reference does not generate"):  # converted, but does not run on the CPU
        return "ref gen ✗, " + ("=" if not classes else "≠ " + classes)
    return "≠ " + classes


def tokens_cell(r: dict | None) -> str:
    if not r or r.get("tokens") is None or not (r.get("reference") or {}).get("ok"):
        return ""
    return "yes" if r["tokens"] == r["reference"]["tokens"] else "no"


def rs_has(r: dict | None, cls: str) -> bool:
    if not r:
        return False
    if cls == "load" and r["verdict"].startswith("reference failed") and r.get("tokens") is None:
        return True
    return any(d["class"] == cls for d in r["diffs"])


def ref_counts(rs) -> str:
    refs = [r.get("reference") for r in rs if r.get("reference")]
    if not refs:
        return "-"
    converts = sum(1 for x in refs if x["ok"] or x["stage"] == "generate")
    return f"{converts} / {sum(1 for x in refs if x['ok'])}"


def report(data: dict, commit: str = "") -> str:
    results = data["results"]
    by_arch: dict[str, dict] = {}
    for r in results:
        name = r["arch"] + ("-" + r["variant"] if r["variant"] else "")
        by_arch.setdefault(name, {})[r["type"]] = r
    lines = ["# Architecture zoo: stquant against mlx_lm.convert", "",
             f"Generated by `tests/python/zoo.py report` from `scripts/zoo-check --fp8 --ollama --json FILE`"
             f" (mlx-lm {data['mlx_lm']}{', stquant ' + commit if commit else ''}). Do not edit by hand.", "",
             "Per arch x type: stquant converts the transformers-5 checkpoint (tests/zoo/<arch>), "
             "mlx_lm.convert its transformers-4 form (tests/python/zoo.py `v4_config`). "
             "`=`: identical tensors (names, dtypes, shapes, bytes), equal quantization blocks and equal "
             "greedy tokens. `≠ classes`: see the differences below. `ref ✗`: mlx_lm.convert fails on the "
             "v4 form; then `loads` / `no load` says whether stquant's output loads and generates in mlx-lm. "
             "ollama-int4: `--layout ollama -q int4`, the store read back and every quantized tensor equal "
             "to pip `mx.quantize` of its source.", "", "## Summary", ""]
    lines += ["| type | archs | mlx_lm.convert converts / and runs | identical | differs | ref ✗: stquant loads | ref ✗: no load | "
              "ref converts, does not generate | refused |", "|---|---|---|---|---|---|---|---|---|"]
    for t in TYPE_COLUMNS:
        for variant in ("", "fp8"):
            rs = [r for r in results if r["type"] == t and r["variant"] == variant]
            if not rs:
                continue
            cells = [cell(r) for r in rs]
            lines.append(f"| {t}{' (' + variant + ')' if variant else ''} | {len(rs)} | "
                         f"{ref_counts(rs)} | "
                         f"{cells.count('=')} | {sum(1 for c in cells if c.startswith('≠'))} | "
                         f"{cells.count('ref ✗, loads')} | {cells.count('ref ✗, no load')} | "
                         f"{sum(1 for c in cells if c.startswith('ref gen'))} | {cells.count('refused')} |")
    lines += ["", "## Per architecture", "",
              "| arch | model_type | mlx_lm.convert (v4) | " + " | ".join(TYPE_COLUMNS) + " | tokens equal |",
              "|---" * (len(TYPE_COLUMNS) + 4) + "|"]
    for name in sorted(by_arch):
        rs = by_arch[name]
        first = next(iter(rs.values()))
        arch = first["arch"]
        model_type = json.loads((ZOO / arch / "config.json").read_text()).get("model_type", "")
        refs = [r["reference"] for r in rs.values() if r.get("reference")]
        ref = ("ok" if all(x["ok"] for x in refs) else
               "fails" if not any(x["ok"] for x in refs) else
               "ok for " + ",".join(r["type"] for r in rs.values() if (r.get("reference") or {}).get("ok")))
        toks = [tokens_cell(rs.get(t)) for t in TYPES]
        tok = "yes" if toks and all(x == "yes" for x in toks) else ",".join(
            t for t, x in zip(TYPES, toks) if x == "no") and "no: " + ",".join(t for t, x in zip(TYPES, toks) if x == "no") or ""
        lines.append(f"| {name} | {model_type} | {ref} | " + " | ".join(cell(rs.get(t)) for t in TYPE_COLUMNS)
                     + f" | {tok} |")
    lines += ["", "## Differences, by class", "",
              "| class | what | archs (types where not all) |", "|---|---|---|"]
    what = {"names": "tensor names differ (sanitize renames, expert stacking, splits, drops)",
            "quantized": "a module quantized by one tool and kept by the other (quant_predicate, "
                         "non-Linear modules)",
            "qparams": "quantized by both with another mode or bits (per-layer entries, e.g. 8-bit routers)",
            "config": "quantization / quantization_config blocks differ",
            "args": "mlx-lm's ModelArgs built from stquant's config.json differ from the reference's "
                    "(config translation)",
            "load": "stquant's output does not load or run in mlx-lm",
            "dtype": "same name, another dtype", "shape": "same name, another shape (reshape / moveaxis)",
            "bytes": "same name, dtype and shape, other bytes (value ops, e.g. norm + 1)",
            "tokens": "greedy tokens differ", "ollama": "ollama store check"}
    for cls in what:
        archs_with = []
        for name in sorted(by_arch):
            types = [t for t in TYPE_COLUMNS if rs_has(by_arch[name].get(t), cls)]
            if types:
                all_types = [t for t in TYPES if t in by_arch[name]]
                archs_with.append(name + ("" if types == all_types else f" ({','.join(types)})"))
        if archs_with:
            lines.append(f"| {cls} | {what[cls]} | {len(archs_with)}: {', '.join(archs_with)} |")
    lines += ["", "## Differences, by architecture", "",
              "Names use N for layer / expert indices; (xK): K tensors. Types in brackets.", ""]
    for name in sorted(by_arch):
        rs = by_arch[name]
        groups: dict[tuple, list[str]] = {}
        for t in TYPE_COLUMNS:
            r = rs.get(t)
            if not r:
                continue
            for d in r["diffs"]:
                groups.setdefault((d["class"], d["detail"], tuple(d["names"][:12]), len(d["names"])), []).append(t)
            if r["verdict"].startswith(("stquant refused", "stquant failed")):
                groups.setdefault(("stquant", r["verdict"], (r.get("stquant_error") or "",), 1), []).append(t)
            if r["verdict"].startswith("reference failed") and r.get("tokens") is None:
                groups.setdefault(("load", "reference failed and stquant's output does not load in mlx-lm",
                                   (r.get("load_error") or "",), 1), []).append(t)
        if not groups:
            continue
        lines += [f"### {name}", ""]
        for (cls, detail, names, n), types in sorted(groups.items(), key=lambda kv: kv[0][0]):
            shown = "; ".join(f"`{x}`" if cls not in ("tokens", "load", "stquant", "ollama", "config") else x
                              for x in names)
            more = f" (+{n - len(names)} more)" if n > len(names) else ""
            lines.append(f"- **{cls}** [{','.join(types)}]: {detail}: {shown}{more}")
        lines.append("")
    failed = {}
    for name, rs in by_arch.items():
        for r in rs.values():
            ref = r.get("reference")
            if ref and not ref["ok"]:
                failed.setdefault(name, (ref["stage"], ref["error"]))
    lines += ["## Where mlx_lm.convert fails on the v4 form", "",
              "| arch | stage | error | why (and what would make it usable) |", "|---|---|---|---|"]
    for name, (stage, error) in sorted(failed.items()):
        note = REFERENCE_NOTES.get(name.replace("-fp8", ""), "")
        lines.append(f"| {name} | {stage} | {error.replace('|', '/')[:160]} | {note} |")
    lines += ["", "## Zoo entries to write again", "",
              "Config overrides for `make_arch_zoo.py` (after its shrinking) that make these entries "
              "usable or more telling:", "", "| arch | overrides | why |", "|---|---|---|"]
    for arch, (overrides, why) in sorted(REGENERATE.items()):
        lines.append(f"| {arch} | `{json.dumps(overrides)}` | {why} |")
    return "\n".join(lines) + "\n"


def cmd_report(args) -> int:
    data = json.loads(Path(args.json).read_text())
    commit = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h"], capture_output=True,
                            text=True).stdout.strip()
    if args.known:
        known = {}
        for r in data["results"]:
            if not acceptable(r):
                name = r["arch"] + ("-" + r["variant"] if r["variant"] else "")
                known.setdefault(name, {})[r["type"]] = cell(r)
        Path(args.known).write_text(json.dumps(known, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    text = report(data, commit)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="zoo.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("import", help="(re)write tests/zoo/<arch> from a raw zoo directory")
    p.add_argument("raw", type=Path)
    p.add_argument("archs", nargs="*")
    p = sub.add_parser("tokenizer", help="(re)write tests/zoo/tokenizer from a tokenizer directory")
    p.add_argument("source", type=Path)
    p = sub.add_parser("materialize", help="write (once) and print a model directory of the cache")
    p.add_argument("arch")
    p.add_argument("--form", default="v5", choices=["v5", "v4", "fp8", "fp8-v4", "fp8-decoded"])
    for name in ("check", "_worker"):
        p = sub.add_parser(name, help="compare stquant with mlx_lm.convert" if name == "check" else argparse.SUPPRESS)
        if name == "check":
            p.add_argument("archs", nargs="*", help="default: every arch of tests/zoo")
            p.add_argument("--subset", action="store_true", help="the archs pytest runs by default")
            p.add_argument("-j", "--jobs", type=int, default=2)
            p.add_argument("--json", help="write every result here (input of `report`)")
            p.add_argument("--timeout", type=float, default=900, help="seconds per arch")
        else:
            p.add_argument("arch")
        p.add_argument("--types", default=",".join(TYPES))
        p.add_argument("--fp8", action="store_true", help="also the block-FP8 variants")
        p.add_argument("--ollama", action="store_true", help="also --layout ollama -q int4")
    p = sub.add_parser("report", help="the markdown status table from `check --json`")
    p.add_argument("--json", required=True)
    p.add_argument("-o", "--output")
    p.add_argument("--known", help="also write the checks that fail today (tests/zoo/known_differences.json)")
    args = ap.parse_args(argv)
    if args.command == "report":
        return cmd_report(args)
    if args.command == "check":
        return cmd_check(args)
    if args.command == "_worker":
        return cmd_worker(args)
    if args.command == "import":
        import_raw(args.raw, args.archs or sorted(p.name for p in args.raw.iterdir() if (p / "config.json").is_file()))
    elif args.command == "tokenizer":
        write_tokenizer(args.source)
    elif args.command == "materialize":
        print(materialize(args.arch, args.form))


if __name__ == "__main__":
    sys.exit(main())
