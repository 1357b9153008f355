"""compressed-tensors checkpoints written by compressed-tensors itself (issue 6, Tests).

Needs torch + compressed-tensors (tests/python/requirements-compressors.txt; not in the default test
venv: see docs/prequant-import.md for why). The quantization parameters come from the library's own
arithmetic (`generate_gparam`, `calculate_qparams` on per-group min/max, as llm-compressor's min-max
observer feeds them), the tensors from the registered compressor's `compress`, the config block from
`QuantizationConfig.model_dump`, and the reference values from the same compressor's `decompress`.

Importing this module imports torch: use it behind pytest.importorskip("compressed_tensors").
"""
import json
import shutil
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
