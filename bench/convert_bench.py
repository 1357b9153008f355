#!/usr/bin/env python3
"""End-to-end conversion benchmark (issue 7): stquant convert vs the machine's read and copy
limits and vs pip mlx_lm.convert, on synthetic Qwen3-MoE-shaped checkpoints.

    bench/convert [--sizes 2,8] [--work DIR] [--cache warm|cold] [--mlx-lm-max-gb 2] [--markdown FILE]

For each size: generates the model once (build/tools/make_synthetic_model, ~2 GB shards), then
  1. `cat` of the input to /dev/null (read limit) and `cp` of it + sync (read+write limit);
  2. `stquant convert` for int4, mxfp4, nvfp4, mxfp8 (mlx layout) [and int4 ollama layout when
     the build has it];
  3. `mlx_lm.convert` (pip, CPU) with the same settings, for sizes <= --mlx-lm-max-gb.
Every run is timed with /usr/bin/time -v (wall time, peak RSS). `--cache cold` drops the page
cache (root) before each run; `warm` reads the input once first. The table gives GB/s of input and
the ratios stquant/mlx_lm and stquant/read-limit and stquant/copy-limit.
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
MODES = [("int4", ["-q", "int4"], ["-q"]), ("mxfp4", ["-q", "mxfp4"], ["-q", "--q-mode", "mxfp4"]),
         ("nvfp4", ["-q", "nvfp4"], ["-q", "--q-mode", "nvfp4"]), ("mxfp8", ["-q", "mxfp8"], ["-q", "--q-mode", "mxfp8"])]


def run_timed(cmd, env=None):
    """Runs cmd under /usr/bin/time -v; returns (wall seconds or None when it failed, peak RSS
    bytes). A failure (e.g. mlx_lm.convert killed for memory) is reported, not fatal."""
    start = time.monotonic()
    proc = subprocess.run(["/usr/bin/time", "-v", *map(str, cmd)], capture_output=True, text=True, env=env)
    wall = time.monotonic() - start
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) * 1024
    failed = proc.returncode != 0 or "terminated by signal" in proc.stderr
    if failed:
        print(f"  FAILED after {wall:.1f} s (peak RSS {rss / 2**30:.1f} GiB): {' '.join(map(str, cmd))}: "
              f"{proc.stderr.strip().splitlines()[0]}", flush=True)
        return None, rss
    return wall, rss


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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="2,8", help="model sizes in GB (1e9 bytes), comma-separated")
    ap.add_argument("--work", default="/tmp/stquant-bench", type=Path)
    ap.add_argument("--cache", choices=["warm", "cold"], default="warm")
    ap.add_argument("--mlx-lm-max-gb", type=float, default=2.0, help="run mlx_lm.convert only up to this size")
    ap.add_argument("--modes", default="int4,mxfp4,nvfp4,mxfp8")
    ap.add_argument("--mlx-lm-modes", default="int4,mxfp4,nvfp4,mxfp8", help="modes to run mlx_lm.convert for")
    ap.add_argument("--markdown", type=Path, help="also write the table as markdown to this file")
    args = ap.parse_args()

    stquant = REPO / "build" / "stquant"
    maker = REPO / "build" / "tools" / "make_synthetic_model"
    mlx_lm = REPO / ".venv" / "bin" / "mlx_lm.convert"
    for tool in (stquant, maker):
        if not tool.exists():
            sys.exit(f"{tool} missing: run scripts/setup first")
    args.work.mkdir(parents=True, exist_ok=True)
    convert_help = subprocess.run([stquant, "convert", "--help"], capture_output=True, text=True).stdout
    has_ollama = "--models-dir" in convert_help
    wanted = set(args.modes.split(","))

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    header = (f"machine: {os.cpu_count()} cores ({cpu}), {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB, "
              f"{platform.platform()}; page cache: {args.cache}; date {time.strftime('%Y-%m-%d %H:%M')}; "
              f"load average at start {os.getloadavg()[0]:.2f}")
    print(header)
    rows = []
    for size in [float(s) for s in args.sizes.split(",")]:
        model = args.work / f"syn-{size:g}g"
        if not (model / "config.json").exists():
            print(f"generating {model} ...", flush=True)
            subprocess.run([maker, "--out", model, "--target-bytes", str(int(size * 1e9)), "--force",
                            "--tokenizer-from", REPO / "examples" / "tiny-model"], check=True, capture_output=True)
        nbytes = input_bytes(model)
        gb = nbytes / 1e9

        prepare(model, args.cache)
        t, rss = run_timed(["sh", "-c", f"cat {model}/*.safetensors > /dev/null"])
        read_gbps = gb / t
        rows.append((size, "cat > /dev/null (read limit)", t, gb / t, rss, None, None))
        copy = args.work / "copy"
        shutil.rmtree(copy, ignore_errors=True)
        prepare(model, args.cache)
        t, rss = run_timed(["sh", "-c", f"cp -r {model} {copy} && sync"])
        copy_gbps = gb / t
        shutil.rmtree(copy, ignore_errors=True)
        rows.append((size, "cp + sync (read+write limit)", t, gb / t, rss, None, None))

        for name, ours, theirs in MODES:
            if name not in wanted:
                continue
            out = args.work / f"out-{name}"
            mlx_t = None
            if size <= args.mlx_lm_max_gb and mlx_lm.exists() and name in args.mlx_lm_modes.split(","):
                shutil.rmtree(out, ignore_errors=True)
                prepare(model, args.cache)
                mlx_t, mlx_rss = run_timed([mlx_lm, "--hf-path", model, "--mlx-path", out, *theirs])
                shutil.rmtree(out, ignore_errors=True)
                if mlx_t is not None:
                    rows.append((size, f"mlx_lm.convert {name}", mlx_t, gb / mlx_t, mlx_rss, None, None))
            prepare(model, args.cache)
            t, rss = run_timed([stquant, "convert", model, "-o", out, "--force", "--quiet", *ours])
            shutil.rmtree(out, ignore_errors=True)
            rows.append((size, f"stquant convert {name} (mlx)", t, gb / t, rss,
                         (mlx_t / t) if mlx_t else None, (gb / t) / read_gbps))
        if has_ollama and "int4" in wanted:
            store = args.work / "ollama-store"
            shutil.rmtree(store, ignore_errors=True)
            prepare(model, args.cache)
            t, rss = run_timed([stquant, "convert", model, "--layout", "ollama", "--name", "bench", "--models-dir", store,
                                "-q", "int4", "--quiet"])
            shutil.rmtree(store, ignore_errors=True)
            rows.append((size, "stquant convert int4 (ollama)", t, gb / t, rss, None, (gb / t) / read_gbps))
        print(f"size {size:g} GB: read limit {read_gbps:.2f} GB/s, copy limit {copy_gbps:.2f} GB/s", flush=True)
        for r in [r for r in rows if r[0] == size]:
            vs_copy = (r[3] / copy_gbps) if r[1].startswith("stquant") else None
            print(f"  {r[1]:<34} {r[2]:8.2f} s {r[3]:7.3f} GB/s  RSS {r[4] / 2**20:8.1f} MiB" +
                  (f"  x{r[5]:.1f} mlx_lm" if r[5] else "") + (f"  {r[6]:.2f} of read" if r[6] else "") +
                  (f"  {vs_copy:.2f} of copy" if vs_copy else ""), flush=True)

    if args.markdown:
        lines = [header, "", "| size | run | wall s | GB/s of input | peak RSS MiB | vs mlx_lm | vs read limit |",
                 "|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r[0]:g} GB | {r[1]} | {r[2]:.2f} | {r[3]:.3f} | {r[4] / 2**20:.1f} | "
                         f"{'x%.1f' % r[5] if r[5] else ''} | {'%.2f' % r[6] if r[6] else ''} |")
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
