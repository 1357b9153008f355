#!/usr/bin/env python3
"""End-to-end conversion benchmark (issues 7, 15): stquant convert in both output layouts vs the
machine's read and copy limits and vs pip mlx_lm.convert, on synthetic Qwen3-MoE-shaped checkpoints.

    bench/convert [--sizes 2,8] [--work DIR] [--cache warm,cold] [--repeat 3] [--modes int4,nvfp4]
                  [--layouts mlx,ollama] [--baseline OTHER_STQUANT] [--mlx-lm-max-gb 2] [--markdown FILE]

For each size: generates the model once (build/tools/make_synthetic_model, ~2 GB shards), then for
each page-cache state
  1. `cat` of the input to /dev/null (read limit) and `cp` of it + sync (read+write limit);
  2. per mode: `stquant convert` into the mlx layout (mlx-lm's choice of tensors, and
     `--policy ollama`: the tensors and types of the ollama layout), and into the ollama layout
     (a fresh model store: every blob is written and hashed);
  3. `mlx_lm.convert` (pip, CPU) with the same settings, for sizes <= --mlx-lm-max-gb.
Every run is timed with /usr/bin/time -v (wall time, CPU time, peak RSS). With --repeat N the runs of one
size and cache state are interleaved (A, B, C, A, B, C, ...) so that load from elsewhere hits them
alike; the table gives the best of N and the spread (slowest - best) as the noise. `cold` drops
the page cache (root) before each run; `warm` reads the input once first. Ratios: mlx_lm.convert /
stquant (`vs mlx_lm`, a speed-up), ollama layout / mlx layout with the same tensors (`vs mlx
layout`, a time ratio), and run / `cat` of the input (`vs cat`, a time ratio).
"""
import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODES = {"int4": (["-q", "int4"], ["-q"]), "mxfp4": (["-q", "mxfp4"], ["-q", "--q-mode", "mxfp4"]),
         "nvfp4": (["-q", "nvfp4"], ["-q", "--q-mode", "nvfp4"]), "mxfp8": (["-q", "mxfp8"], ["-q", "--q-mode", "mxfp8"])}


def run_timed(cmd):
    """Runs cmd under /usr/bin/time -v; returns (wall seconds or None when it failed, CPU seconds
    (user + system), peak RSS bytes, bytes read from storage). A failure (e.g. mlx_lm.convert killed for memory) is
    reported, not fatal."""
    start = time.monotonic()
    proc = subprocess.run(["/usr/bin/time", "-v", *map(str, cmd)], capture_output=True, text=True)
    wall = time.monotonic() - start
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) * 1024
    # Blocks read from storage (512 bytes each): the input read from disk when the cache is cold.
    read = int(re.search(r"File system inputs: (\d+)", proc.stderr).group(1)) * 512
    cpu = sum(float(re.search(rf"{kind} time \(seconds\): ([0-9.]+)", proc.stderr).group(1)) for kind in ("User", "System"))
    if proc.returncode != 0 or "terminated by signal" in proc.stderr:
        print(f"  FAILED after {wall:.1f} s (peak RSS {rss / 2**30:.1f} GiB): {' '.join(map(str, cmd))}: "
              f"{proc.stderr.strip().splitlines()[0]}", flush=True)
        return None, cpu, rss, read
    return wall, cpu, rss, read


def drop_caches():
    subprocess.run(["sync"], check=True)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as e:
        sys.exit(f"--cache cold needs root to drop the page cache: {e}")


def input_bytes(model: Path) -> int:
    return sum(p.stat().st_size for p in model.glob("*.safetensors"))


def prepare(model: Path, cache: str):
    if cache == "cold":
        drop_caches()
    else:
        subprocess.run(["sh", "-c", f"cat {model}/*.safetensors > /dev/null"], check=True)


class Run:
    """One command of the table, timed --repeat times."""

    def __init__(self, label, cmd, output=None, mode=None, layout=None):
        self.label, self.cmd, self.output, self.mode, self.layout = label, cmd, output, mode, layout
        self.walls, self.cpus, self.rss, self.read = [], [], 0, 0

    def once(self, model, cache):
        if self.output:
            shutil.rmtree(self.output, ignore_errors=True)
        prepare(model, cache)
        wall, cpu, rss, read = run_timed(self.cmd)
        self.read = max(self.read, read)
        if self.output:
            shutil.rmtree(self.output, ignore_errors=True)
        if wall is not None:
            self.walls.append(wall)
            self.cpus.append(cpu)
        self.rss = max(self.rss, rss)

    @property
    def best(self):
        return min(self.walls) if self.walls else None

    @property
    def cpu(self):
        """CPU seconds of the run with the best wall time."""
        return self.cpus[self.walls.index(self.best)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="2,8", help="model sizes in GB (1e9 bytes), comma-separated")
    ap.add_argument("--work", default="/tmp/stquant-bench", type=Path)
    ap.add_argument("--cache", default="warm", help="page cache states, comma-separated: warm, cold")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each command (interleaved); the best is reported")
    ap.add_argument("--modes", default="int4,mxfp4,nvfp4,mxfp8")
    ap.add_argument("--layouts", default="mlx,ollama", help="stquant output layouts, comma-separated")
    ap.add_argument("--mlx-lm-max-gb", type=float, default=2.0, help="run mlx_lm.convert only up to this size")
    ap.add_argument("--mlx-lm-modes", default="int4,mxfp4,nvfp4,mxfp8", help="modes to run mlx_lm.convert for")
    ap.add_argument("--no-copy", action="store_true", help="skip the cp + sync row (slow on some disks)")
    ap.add_argument("--baseline", type=Path, help="another stquant binary (e.g. of the main branch): its ollama "
                    "layout runs are added, interleaved with the others")
    ap.add_argument("--report", action="store_true",
                    help="also the mlx layout with --report (each quantized tensor's error measured in the same pass)")
    ap.add_argument("--multi", action="store_true",
                    help="also every --modes type in one run (-q a,b,.. -o 'DIR/{q}': one read of the input), "
                         "against the separate mlx-layout runs of the same types")
    ap.add_argument("--markdown", type=Path, help="also write the table as markdown to this file")
    args = ap.parse_args()

    stquant = REPO / "build" / "stquant"
    maker = REPO / "build" / "tools" / "make_synthetic_model"
    mlx_lm = REPO / ".venv" / "bin" / "mlx_lm.convert"
    for tool in (stquant, maker):
        if not tool.exists():
            sys.exit(f"{tool} missing: run scripts/setup first")
    args.work.mkdir(parents=True, exist_ok=True)
    layouts = args.layouts.split(",")
    caches = args.cache.split(",")
    if any(c not in ("warm", "cold") for c in caches):
        sys.exit("--cache: warm and/or cold")

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    header = (f"machine: {os.cpu_count()} cores ({cpu}), {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB, "
              f"{platform.platform()}; date {time.strftime('%Y-%m-%d %H:%M')}; load average at start "
              f"{os.getloadavg()[0]:.2f}; best of {args.repeat}, interleaved")
    print(header)
    rows = []
    for size in [float(s) for s in args.sizes.split(",")]:
        model = args.work / f"syn-{size:g}g"
        if not (model / "config.json").exists():
            print(f"generating {model} ...", flush=True)
            subprocess.run([maker, "--out", model, "--target-bytes", str(int(size * 1e9)), "--force",
                            "--tokenizer-from", REPO / "examples" / "tiny-model"], check=True, capture_output=True)
        gb = input_bytes(model) / 1e9
        for cache in caches:
            copy = args.work / "copy"
            runs = [Run("cat > /dev/null (read limit)", ["sh", "-c", f"cat {model}/*.safetensors > /dev/null"])]
            if not args.no_copy:
                runs.append(Run("cp + sync (read+write limit)", ["sh", "-c", f"cp -r {model} {copy} && sync"], copy))
            for name in args.modes.split(","):
                ours, theirs = MODES[name]
                out, store = args.work / f"out-{name}", args.work / f"store-{name}"
                if size <= args.mlx_lm_max_gb and mlx_lm.exists() and name in args.mlx_lm_modes.split(","):
                    runs.append(Run(f"mlx_lm.convert {name}", [mlx_lm, "--hf-path", model, "--mlx-path", out, *theirs], out,
                                    name, "mlx_lm"))
                if "mlx" in layouts:
                    runs.append(Run(f"stquant {name}, mlx layout", [stquant, "convert", model, "-o", out, "--force",
                                                                     "--quiet", *ours], out, name, "mlx"))
                    runs.append(Run(f"stquant {name}, mlx layout --policy ollama",
                                    [stquant, "convert", model, "-o", out, "--force", "--quiet", "--policy", "ollama", *ours],
                                    out, name, "mlx-ollama-policy"))
                    if args.report:
                        runs.append(Run(f"stquant {name}, mlx layout --report",
                                        [stquant, "convert", model, "-o", out, "--force", "--quiet", "--report",
                                         args.work / "report.json", *ours], out, name, "mlx-report"))
                if "ollama" in layouts:
                    runs.append(Run(f"stquant {name}, ollama layout",
                                    [stquant, "convert", model, "--layout", "ollama", "--name", "bench", "--models-dir",
                                     store, "--quiet", *ours], store, name, "ollama"))
                if args.baseline:
                    runs.append(Run(f"baseline {name}, ollama layout",
                                    [args.baseline, "convert", model, "--layout", "ollama", "--name", "bench",
                                     "--models-dir", store, "--quiet", *ours], store, name, "ollama"))
            if args.multi and "mlx" in layouts:
                modes = args.modes.split(",")
                runs.append(Run(f"stquant {','.join(modes)} in one pass, mlx layout",
                                [stquant, "convert", model, "-o", args.work / "multi" / "{q}", "--force", "--quiet",
                                 "-q", ",".join(modes)], args.work / "multi", None, "multi"))
            for _ in range(args.repeat):
                for run in runs:
                    run.once(model, cache)
            read_limit = runs[0].best
            print(f"size {size:g} GB ({gb:.2f} GB of input), page cache {cache}:", flush=True)
            for run in runs:
                if run.best is None:
                    continue
                def best_of(layout):
                    same = next((r for r in runs if r.mode == run.mode and r.layout == layout), None)
                    return same.best if same else None
                mlx_lm_best, mlx_best = best_of("mlx_lm"), best_of("mlx-ollama-policy")
                speedup = mlx_lm_best / run.best if run.layout == "mlx" and mlx_lm_best else None
                vs_mlx = run.best / mlx_best if run.layout == "ollama" and mlx_best else None
                vs_cat = run.best / read_limit if read_limit and run is not runs[0] else None
                plain = best_of("mlx")
                separate = [r.best for r in runs if r.layout == "mlx"]
                vs_separate = (run.best / sum(separate) if run.layout == "multi" and separate and None not in separate
                               else None)
                vs_plain = run.best / plain if run.layout == "mlx-report" and plain else None
                row = (size, cache, run.label, run.best, max(run.walls) - run.best, gb / run.best, run.rss, speedup,
                       vs_mlx, vs_cat, run.cpu)
                rows.append(row)
                print(f"  {run.label:<44} {run.best:7.2f} s (+{row[4]:.2f}, CPU {run.cpu:5.2f} s) {row[5]:6.2f} GB/s  "
                      f"RSS {run.rss / 2**20:7.1f} MiB" +
                      (f"  x{speedup:.1f} mlx_lm" if speedup else "") + (f"  {vs_mlx:.2f}x mlx layout" if vs_mlx else "") +
                      (f"  {vs_cat:.2f}x cat" if vs_cat else "") +
                      (f"  {vs_plain:.2f}x without --report" if vs_plain else "") +
                      (f"  {vs_separate:.2f}x the {len(separate)} separate runs" if vs_separate else "") +
                      (f"  read {run.read / 1e9:.2f} GB from storage" if cache == "cold" else ""), flush=True)

    if args.markdown:
        lines = [header, "", "| size | cache | run | best wall s | spread s | CPU s | GB/s of input | peak RSS MiB | "
                 "vs mlx_lm | vs mlx layout | vs cat |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r[0]:g} GB | {r[1]} | {r[2]} | {r[3]:.2f} | {r[4]:.2f} | {r[10]:.2f} | {r[5]:.2f} | {r[6] / 2**20:.0f} | "
                         f"{'%.1fx' % r[7] if r[7] else ''} | {'%.2fx' % r[8] if r[8] else ''} | {'%.2fx' % r[9] if r[9] else ''} |")
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
