"""The zoo status report (tests/zoo/STATUS.md) and the list of checks failing today
(tests/zoo/known_differences.json), from the results of `zoo.py check --json`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from zoo import REPO, TYPES, ZOO
from zoo_check import acceptable, ref_counts


# Why mlx_lm.convert cannot convert an arch's v4 form, and what would make it usable; by arch.
REFERENCE_NOTES = {
    "bailing_hybrid": "transformers 5.25's BailingHybrid names the KDA layers' output projection "
                      "attention.dense, mlx-lm's bailing_moe_v3 attention.o_proj (its sanitize does not "
                      "rename it); no config override helps",
    "bitnet": "mlx-lm's bitnet reads only the packed ternary release (weight_scale per projection); a "
              "bf16 BitNet is not an mlx-lm input",
    "gpt2": "mlx-lm's gpt2 sanitize expects the GPT2Model names (h.N.*), transformers' GPT2LMHeadModel "
            "writes transformer.h.N.*",
    "gpt_oss": "mlx-lm's gpt_oss sanitize reads the MXFP4 release (gate_up_proj_blocks); the bf16 form "
               "(experts.gate_up_proj [E, hidden, 2I]) is split on the wrong axis and left without .weight",
    "kimi_linear": "transformers 5.25 writes a dense layer's MLP as block_sparse_moe.{gate,up,down}_proj, "
                   "mlx-lm's sanitize renames block_sparse_moe -> mlp only in MoE layers (the zoo's layer 0 "
                   "is dense, mlp_layer_types [dense, sparse])",
    "llama4": "mlx-lm runs Llama 4 MoE only as the multimodal checkpoint (model_type llama4, text_config, "
              "language_model.* names); its llama4_text is a dense tied model. transformers' text-only "
              "Llama4ForCausalLM form has no mlx-lm reader",
    "llama4_text": "as llama4",
    "minicpm3": "the zoo's LongRoPE has 16 short/long factors, mlx-lm's minicpm3 (and transformers' own "
                "check, which warns) want qk_rope_head_dim / 2 = 8",
    "minimax": "the zoo is MiniMax-Text-01 (lightning linear-attention layers); mlx-lm's minimax is "
               "MiniMax-M2 (full attention only)",
    "nanochat": "mlx-lm's nanochat reads the original nanochat names (no sanitize for transformers' "
                "model.layers.N.mlp.fc1 / self_attn.*)",
    "olmo": "mlx-lm's olmo is the original OLMo format (needs the ai2-olmo package, d_model / n_layers); "
            "transformers' Olmo is not an mlx-lm input",
    "olmo_hybrid": "transformers 5.25 names the linear layers' norms attention_layer_norm / "
                   "feedforward_layer_norm; mlx-lm 0.32.2's olmo_hybrid input_layernorm / "
                   "post_attention_layernorm",
    "qwen3_5_moe": "mlx-lm's qwen3_5_moe stacks only the fused release form (experts.gate_up_proj / "
                   "experts.down_proj); transformers 5.25 writes per-expert tensors",
}

# Zoo entries whose config still defeats the comparison: the config overrides to give
# make_arch_zoo2.py (overrides.json, applied after the shrinking) when the raw zoo is written
# again, and why. Each was checked to load in transformers 5.25's AutoConfig.
REGENERATE = {
    "kimi_linear": ({"mlp_layer_types": ["sparse", "sparse"]},
                    "no dense layer: transformers' dense-layer names (block_sparse_moe.*_proj) are not "
                    "mlx-lm's (mlp.*_proj), which keeps the reference from converting"),
    "minicpm3": ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 8,
                                      "long_factor": [1.0] * 8, "original_max_position_embeddings": 256}},
                 "8 factors (qk_rope_head_dim / 2), not 16"),
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
              "Config overrides for `make_arch_zoo2.py` (after its shrinking) that make these entries "
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
