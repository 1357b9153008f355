"""compressed-tensors checkpoints written by compressed-tensors itself (issue 6, Tests).

Needs torch + compressed-tensors (tests/python/requirements-compressors.txt; not in the default test
venv: see README, "Test fixtures and the real compressors", for why). The quantization parameters come from the library's own
arithmetic (`generate_gparam`, `calculate_qparams` on per-group min/max, as llm-compressor's min-max
observer feeds them), the tensors from the registered compressor's `compress`, the config block from
`QuantizationConfig.model_dump`, and the reference values from the same compressor's `decompress`.

Importing this module imports torch: import it only where torch and compressed-tensors are installed.

As a script it writes the small fixtures committed under tests/python/fixtures/compressed_tensors
(one folder per case of CASES: the checkpoint and, for the lossless cases, reference.safetensors
with the library's decompressed weights), which the tests use without torch:

    python tests/python/ct_real_fixtures.py --write-committed tests/python/fixtures/compressed_tensors
"""
import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from compressed_tensors.compressors import BaseCompressor
from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme
from compressed_tensors.quantization.utils import calculate_qparams, generate_gparam
from safetensors.torch import load_file, save_file

# name -> (compression format, QuantizationArgs keyword arguments)
SCHEMES = {
    "nvfp4": ("nvfp4-pack-quantized",
              dict(num_bits=4, type="float", symmetric=True, strategy="tensor_group", group_size=16,
                   scale_dtype=torch.float8_e4m3fn)),
    "int4-sym": ("pack-quantized",
                 dict(num_bits=4, type="int", symmetric=True, strategy="group", group_size=64)),
    "int4-asym": ("pack-quantized",
                  dict(num_bits=4, type="int", symmetric=False, strategy="group", group_size=64)),
}


# Which weights a fixture quantizes: (select(tensor name), config targets).
LINEAR = (lambda n: "layers." in n and n.endswith("proj.weight"), ["Linear"])
EXPERTS = (lambda n: ".mlp.experts." in n and n.endswith("proj.weight"), [r"re:.*mlp\.experts\.\d+\..*_proj$"])


def scheme_of(kind: str, targets=("Linear",)) -> QuantizationScheme:
    fmt, args = SCHEMES[kind]
    return QuantizationScheme(targets=list(targets), weights=QuantizationArgs(**args), format=fmt)


def coarsen(scale: torch.Tensor) -> torch.Tensor:
    """scale rounded to 4 significant bits (same dtype): every asymmetric bias -(8 + zp) * scale is
    then exact in bfloat16, so that the import is lossless rather than refused."""
    m, e = torch.frexp(scale.float())
    return torch.ldexp(torch.round(m * 16) / 16, e).to(scale.dtype)


def qparams(weight: torch.Tensor, args: QuantizationArgs, coarse: bool = False):
    """weight_scale, weight_zero_point (and weight_global_scale for FP4) of one weight: per-group
    min/max, then the library's calculate_qparams (and generate_gparam). coarse: the scales are
    coarsened and the zero points recomputed from them by the library's formula."""
    rows, cols = weight.shape
    groups = weight.reshape(rows, cols // args.group_size, args.group_size).float()
    mins, maxs = groups.amin(-1), groups.amax(-1)
    out = {}
    global_scale = None
    if args.strategy == "tensor_group":
        global_scale = generate_gparam(weight.float().min(), weight.float().max())
        out["weight_global_scale"] = global_scale
    scale, zp = calculate_qparams(mins, maxs, args, global_scale=global_scale)
    if args.scale_dtype is None:
        scale = scale.to(weight.dtype)  # llm-compressor stores scales in the weight's dtype
    if coarse:
        scale = coarsen(scale)
        lo = torch.min(mins, torch.zeros_like(mins))
        zp = torch.clamp(torch.round(-8 - lo / scale.float()), -8, 7).to(zp.dtype)
    out["weight_scale"] = scale
    out["weight_zero_point"] = zp
    return out


def build(tiny_model: Path, dst: Path, kind: str, which=LINEAR, coarse: bool = False):
    """Writes dst: the tiny Hugging Face model `tiny_model` with the weights `which` selects
    compressed by compressed-tensors (`kind` in SCHEMES), lm_head and the rest kept. Returns
    {module name: the weight compressed-tensors' decompressor gives back (torch tensor)}."""
    fmt, _ = SCHEMES[kind]
    select, targets = which
    scheme = scheme_of(kind, targets)
    compressor = BaseCompressor.get_value_from_registry(fmt)
    src = {}
    for f in sorted(tiny_model.glob("*.safetensors")):
        src.update(load_file(str(f)))
    tensors, ref = {}, {}
    for name, w in src.items():
        if not select(name):
            tensors[name] = w
            continue
        base = name[: -len(".weight")]
        state = {"weight": w, **qparams(w, scheme.weights, coarse)}
        compressed = compressor.compress(state, scheme)
        for k, v in compressed.items():
            tensors[f"{base}.{k}"] = v.contiguous()
        ref[base] = compressor.decompress(dict(compressed), scheme)["weight"]
    dst.mkdir(parents=True)
    for f in tiny_model.iterdir():
        if f.suffix != ".safetensors" and f.name not in ("config.json", "model.safetensors.index.json"):
            shutil.copy(f, dst / f.name)
    qc = QuantizationConfig(config_groups={"group_0": scheme}, format=fmt, ignore=["lm_head"],
                            quantization_status="compressed")
    config = json.loads((tiny_model / "config.json").read_text())
    config["quantization_config"] = qc.model_dump(mode="json", exclude_none=True)
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return ref


# ------------------------------------------------------------------------------------------------
# The committed fixtures: the shared tiny models cut down to a few hundred KB each (every quantized
# weight keeps 2+ rows and 2+ groups per row; MoE keeps 4 experts), then compressed as above.

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMITTED_DIR = REPO_ROOT / "tests/python/fixtures/compressed_tensors"

# shared tiny model -> the config values of its cut-down version (vocab_size stays: the tokenizer
# has 439 tokens). Embeddings are tied, so that there is no lm_head to carry.
SMALL = {
    "tiny-llama": dict(hidden_size=128, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                       intermediate_size=128, num_hidden_layers=1, tie_word_embeddings=True),
    "tiny-qwen3-moe": dict(hidden_size=64, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                           intermediate_size=64, moe_intermediate_size=32, num_local_experts=4,
                           num_hidden_layers=2, tie_word_embeddings=True),
}

# case -> (shared tiny model, SCHEMES kind, LINEAR or EXPERTS, coarse, writes reference.safetensors)
CASES = {
    "nvfp4-dense": ("tiny-llama", "nvfp4", LINEAR, False, True),
    "nvfp4-experts": ("tiny-qwen3-moe", "nvfp4", EXPERTS, False, True),
    "int4-sym": ("tiny-llama", "int4-sym", LINEAR, False, True),
    "int4-asym": ("tiny-llama", "int4-asym", LINEAR, True, True),
    # The library's own min-max scales: refused by stquant, so no reference values.
    "int4-asym-minmax": ("tiny-llama", "int4-asym", LINEAR, False, False),
}


def small_shape(name: str, c: dict):
    """The shape of tensor `name` in the cut-down model of config c; None: the tensor is dropped."""
    parts = name.split(".")
    if name == "lm_head.weight":
        return None if c["tie_word_embeddings"] else (c["vocab_size"], c["hidden_size"])
    if name == "model.embed_tokens.weight":
        return (c["vocab_size"], c["hidden_size"])
    if name == "model.norm.weight":
        return (c["hidden_size"],)
    assert parts[:2] == ["model", "layers"], name
    if int(parts[2]) >= c["num_hidden_layers"]:
        return None
    if ".experts." in name and int(parts[parts.index("experts") + 1]) >= c["num_local_experts"]:
        return None
    h, q, kv = c["hidden_size"], c["num_attention_heads"] * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
    inter = c["moe_intermediate_size"] if ".experts." in name else c["intermediate_size"]
    leaf = parts[-2]
    shapes = {"input_layernorm": (h,), "post_attention_layernorm": (h,), "q_norm": (c["head_dim"],),
              "k_norm": (c["head_dim"],), "q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q),
              "gate_proj": (inter, h), "up_proj": (inter, h), "down_proj": (h, inter),
              "gate": (c.get("num_local_experts"), h)}
    return shapes[leaf]


def write_small_model(tiny_model: Path, dst: Path, values: dict):
    """dst: tiny_model with config `values` and every tensor its leading slice of the new shape."""
    config = json.loads((tiny_model / "config.json").read_text())
    assert set(values) <= set(config), sorted(set(values) - set(config))
    config.update(values)
    tensors = {}
    for f in sorted(tiny_model.glob("*.safetensors")):
        for name, t in load_file(str(f)).items():
            shape = small_shape(name, config)
            if shape is not None:
                tensors[name] = t[tuple(slice(0, n) for n in shape)].contiguous()
    dst.mkdir(parents=True)
    for f in ("generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model / f, dst / f)
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})


def write_committed(shared_dir: Path, out: Path, cases=None):
    """Writes out/<case> for every case of CASES (replacing what is there; other files of out are
    left alone): the checkpoint, and reference.safetensors ({module}.weight: compressed-tensors'
    decompressed weight, bfloat16) for the lossless cases."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for model, values in SMALL.items():
            write_small_model(shared_dir / "fixtures/hf" / model, Path(tmp) / model, values)
        for case in cases or CASES:
            model, kind, which, coarse, reference = CASES[case]
            dst = out / case
            if dst.exists():
                shutil.rmtree(dst)
            ref = build(Path(tmp) / model, dst, kind, which, coarse)
            if reference:
                save_file({f"{base}.weight": w.contiguous() for base, w in ref.items()},
                          str(dst / "reference.safetensors"), metadata={"format": "pt"})


def versions() -> dict:
    import compressed_tensors
    import transformers
    return {"torch": torch.__version__, "compressed-tensors": compressed_tensors.__version__,
            "transformers": transformers.__version__}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--write-committed", metavar="DIR", type=Path, required=True,
                   help="where to write the case folders (the committed ones: " + str(COMMITTED_DIR.relative_to(REPO_ROOT)) + ")")
    p.add_argument("--shared", metavar="DIR", type=Path, default=REPO_ROOT.parent / "shared",
                   help="the shared/ folder with fixtures/hf (default: beside the repository)")
    args = p.parse_args(argv)
    write_committed(args.shared, args.write_committed)
    print(f"wrote {', '.join(CASES)} into {args.write_committed} with {versions()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
