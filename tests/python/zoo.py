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

Command line (scripts/zoo-check wraps `check`):
  zoo.py check [ARCH...] [--subset] [--types T,...] [--fp8] [--ollama] [-j N] [--json FILE]
                              compare, one line per arch x type, and a summary per type
  zoo.py report --json FILE [-o tests/zoo/STATUS.md] [--known tests/zoo/known_differences.json]
                              the markdown status table (and the list of checks failing today)
  zoo.py import RAW_ZOO_DIR [ARCH...]     (re)write the fixtures from a raw zoo
  zoo.py tokenizer TOKENIZER_DIR          (re)write tests/zoo/tokenizer
  zoo.py materialize FIXTURE [--form v5|v4|fp8|fp8-v4|fp8-decoded]   print the cached model dir
                              (the block-FP8 variant of qwen3: materialize qwen3-fp8src --form fp8)
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
import sys
import tempfile
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
# Block-FP8 variants (materialize form "fp8", stquant's input): arch -> (the fixture they are
# made of, the reference's input: the FP8 checkpoint itself where mlx-lm's sanitize decodes it,
# else the decoded bf16 one). The bases are entries of the arch's model_type whose projections
# span several 128x128 blocks with a partial last one (intermediate 320, DeepSeek-V3's experts
# and kv_b_proj 192), which the hidden-64 entries do not; they are not archs of their own.
FP8_VARIANTS = {"deepseek_v3": ("deepseek_v3-fp8src", "fp8-v4"), "qwen3": ("qwen3-fp8src", "fp8-decoded")}
FP8_BASES = {base for base, _ in FP8_VARIANTS.values()}


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

def fixtures() -> list[str]:
    """Every entry of tests/zoo: the archs and the block-FP8 bases."""
    return sorted(p.name for p in ZOO.iterdir() if (p / "header.json").is_file())


def archs() -> list[str]:
    return [a for a in fixtures() if a not in FP8_BASES]


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


def leading(types: list, kind: str) -> int:
    """How many entries of a per-layer list come before the first that is not `kind` (the
    transformers-4 first_k_dense_replace of an mlp_layer_types list)."""
    return next((i for i, t in enumerate(types) if t != kind), len(types))


def _bailing_hybrid(c):
    # mlx-lm's bailing_moe_v3 is transformers' BailingHybrid (KDA linear attention); mlx-lm picks
    # it by architectures (MODEL_ARCHITECTURE_REMAPPING), its bailing_hybrid is an older model.
    # Its layers follow layer_group_size (every group's last layer is MLA), transformers 5's
    # follow layer_types, which a config may hold apart from layer_group_size (the zoo's: 6).
    # Three fields transformers 5 renamed have defaults in mlx-lm (8 experts per token of 4).
    c["architectures"] = ["BailingMoeV3ForCausalLM"]
    for field, v5_name in (("num_experts_per_tok", "num_experts_per_token"), ("n_group", "num_expert_group"),
                           ("max_position_embeddings", "model_max_length")):
        if v5_name in c:
            c.setdefault(field, c[v5_name])
    if layer_period(c):
        c["layer_group_size"] = layer_period(c)


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
    c.setdefault("first_k_dense_replace", leading(c.get("mlp_layer_types", []), "dense"))
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
    "bailing_hybrid": _bailing_hybrid,
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
    # transformers' Mamba2Mixer: the inner width is expand * hidden_size (no config field).
    "mamba2": lambda c: c.setdefault("intermediate_size", int(c.get("expand", 2) * c.get("hidden_size", 0))),
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


def finite_json(v):
    """transformers 5 writes a non-finite float as {"__float__": "Infinity"} (e.g. Mamba-2's
    time_step_limit), transformers 4 as the bare JSON Infinity that Python's json reads."""
    if isinstance(v, dict):
        if set(v) == {"__float__"}:
            return float(v["__float__"])
        return {k: finite_json(x) for k, x in v.items()}
    if isinstance(v, list):
        return [finite_json(x) for x in v]
    return v


def v4_config(config: dict, autoconfig: dict) -> tuple[dict, list[str]]:
    """The transformers-4 form of a transformers-5 config.json, and the fields still missing for
    mlx-lm's ModelArgs. Rules, in order (each only where the field is absent):
      1. model_type: a text-only type mlx-lm lacks -> the family's (TEXT_ONLY_MODEL_TYPES);
      2. torch_dtype <- dtype (mlx_lm.convert casts to torch_dtype); non-finite floats as
         JSON Infinity / NaN (finite_json);
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
    c = finite_json(json.loads(json.dumps(config)))
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
        p.add_argument("--keep", help="keep stquant's outputs in this directory (the references are in "
                                      "build/zoo-cache/ref)")
    p = sub.add_parser("report", help="the markdown status table from `check --json`")
    p.add_argument("--json", required=True)
    p.add_argument("-o", "--output")
    p.add_argument("--known", help="also write the checks that fail today (tests/zoo/known_differences.json)")
    args = ap.parse_args(argv)
    if args.command == "report":
        import zoo_report

        return zoo_report.cmd_report(args)
    if args.command in ("check", "_worker"):
        import zoo_check

        return zoo_check.cmd_check(args) if args.command == "check" else zoo_check.cmd_worker(args)
    if args.command == "import":
        import_raw(args.raw, args.archs or sorted(p.name for p in args.raw.iterdir() if (p / "config.json").is_file()))
    elif args.command == "tokenizer":
        write_tokenizer(args.source)
    elif args.command == "materialize":
        print(materialize(args.arch, args.form))


if __name__ == "__main__":
    sys.exit(main())
