#!/usr/bin/env bash
# GPU check of invrender on a fresh CUDA machine (PyTorch installed, no network needed).
#
#   bash scripts/gpu_check.sh --out DIR [--wheels DIR] [--scene DIR] [--python PATH]
#                             [--budget-s S] [--dry-run]
#
# Steps, each timed and recorded with status ok / failed / skipped and the tail of its output:
#   environment      nvidia-smi, torch + CUDA, nvcc, compilers, the [gpu] extras
#   install_wheels   pip install --no-index --find-links WHEELS of what is missing among the
#                    project's dependencies and the [gpu] extra (torch pinned to the installed build)
#   nvcc_compile     nvcc -c of every cuda/*.cu (when nvcc exists)
#   cuda_ext_build   JIT build of the native CUDA extension          [GPU]
#   gpu_tests        pytest -m gpu (collect-only count, then the run) [GPU]
#   backend_warmup   first use of native / gsplat / nvdiffrast        [GPU]
#   bench_splat      ms per training iteration, native vs gsplat, 800^2, 300k Gaussians [GPU]
#   bench_mesh       mesh rasterizer frame, native vs nvdiffrast, 800^2, ~100k triangles [GPU]
#   train_toybox     short end-to-end `invrender train` on data/toybox [GPU]
#   train_scene      full default PRD `invrender train --data SCENE` (with --scene) [GPU]
# Report: DIR/gpu_report.json and DIR/gpu_report.md; logs in DIR/logs/.
#
# Options:
#   --out DIR       report folder (required)
#   --wheels DIR    folder of wheels to install from (offline); skipped with a note if absent
#   --scene DIR     an 800^2 TensoIR-style scene for the full PRD timing; make one with
#                   python scripts/make_synthetic.py --res 800 --n-train 100 --n-test 200 --out DIR
#   --python PATH   interpreter (default: .venv/bin/python of the repo, else python3);
#                   installs go into its environment only
#   --budget-s S    no new step starts after S seconds (default 900); a running step is
#                   stopped at the budget. The full --scene run needs a larger budget.
#   --dry-run       everything that does not need CUDA: tool checks, what would be installed,
#                   nvcc compile, the gpu tests (which skip), tiny CPU versions of the
#                   benchmarks and of the training run; GPU figures read "not measured".
# Exit status: 0 all steps ok or skipped, 1 a step failed, 2 bad usage, 3 no CUDA found
# without --dry-run (the script then ran as a dry run).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS="" OUT="" PY="" SCENE="" DRY=0 BUDGET=900

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }
need_arg() { [[ $# -ge 2 && -n "$2" ]] || { echo "gpu_check.sh: $1 needs a value" >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --wheels) need_arg "$@"; WHEELS="$2"; shift 2 ;;
        --out) need_arg "$@"; OUT="$2"; shift 2 ;;
        --python) need_arg "$@"; PY="$2"; shift 2 ;;
        --scene) need_arg "$@"; SCENE="$2"; shift 2 ;;
        --budget-s) need_arg "$@"; BUDGET="$2"; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
done
[[ -n "$OUT" ]] || { echo "gpu_check.sh: --out DIR is required (see --help)" >&2; exit 2; }
[[ "$BUDGET" =~ ^[0-9]+$ ]] || { echo "gpu_check.sh: --budget-s must be a whole number of seconds" >&2; exit 2; }
if [[ -z "$PY" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY="$(command -v python3 || true)"; fi
fi
[[ -n "$PY" ]] && "$PY" -c "import sys" 2>/dev/null || { echo "gpu_check.sh: no working python ('$PY'); pass --python" >&2; exit 2; }
PY="$(command -v "$PY")"

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LOGS="$OUT/logs"
# only what this script writes (a previous report's figures must not leak into this one)
rm -rf "$LOGS" "$OUT/train_toybox" "$OUT/train_scene" "$OUT/train_cpu_tiny" "$OUT/steps.jsonl" \
    "$OUT/environment.json" "$OUT"/bench_*.json "$OUT/gpu_report.json" "$OUT/gpu_report.md"
mkdir -p "$LOGS"
STEPS="$OUT/steps.jsonl"
: >"$STEPS"
HELPER="$LOGS/gpu_check_helper.py"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
INVRENDER=("$PY" -c "import sys; from invrender.cli import main; main(sys.argv[1:])")

# ------------------------------------------------------------------------------------------
# the Python half: environment probe, step records, summaries, the report (stdlib only)
cat >"$HELPER" <<'PYEOF'
import json, os, platform, re, shutil, subprocess, sys, xml.etree.ElementTree as ET
from pathlib import Path

NOT_GPU = "not measured"


def sh(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        return (r.stdout + r.stderr).strip() if r.returncode == 0 else None
    except Exception:
        return None


def tail(path, lines=40, chars=4000):
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])[-chars:]


def cmd_env(out):
    env = {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
           "hostname": platform.node(), "cpu_count": os.cpu_count()}
    try:
        mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
        env["mem_total_gib"] = round(int(mem) / 2 ** 20, 1)
    except Exception:
        pass
    smi = sh(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"])
    env["nvidia_smi"] = smi.splitlines() if smi else None
    nvcc = shutil.which("nvcc") or next((str(p) for p in [Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc"] if p.exists()), None)
    env["nvcc"] = nvcc
    v = sh([nvcc, "--version"]) if nvcc else None
    env["nvcc_version"] = v.splitlines()[-1] if v else None
    env["cxx"] = shutil.which(os.environ.get("CXX", "c++"))
    from importlib import metadata
    for dist in ("torch", "gsplat", "diffrp-nvdiffrast", "packaging", "pytest", "ninja", "tyro"):
        try:
            env[f"version_{dist}"] = metadata.version(dist)
        except Exception:
            env[f"version_{dist}"] = None
    env["cuda_available"] = False
    try:
        import torch
        env["torch_cuda"] = torch.version.cuda
        env["cuda_available"] = bool(torch.cuda.is_available())
        if env["cuda_available"]:
            p = torch.cuda.get_device_properties(0)
            env["device_name"] = p.name
            env["device_memory_gib"] = round(p.total_memory / 2 ** 30, 1)
            env["device_capability"] = f"{p.major}.{p.minor}"
            env["device_count"] = torch.cuda.device_count()
    except Exception as exc:
        env["torch_error"] = f"{type(exc).__name__}: {exc}"
    Path(out).write_text(json.dumps(env, indent=1) + "\n")
    print(json.dumps(env, indent=1))
    if "torch_error" in env:
        sys.exit(1)


def cmd_get(path, key):
    try:
        v = json.loads(Path(path).read_text()).get(key)
    except Exception:
        v = None
    print("" if v is None else (int(v) if isinstance(v, bool) else v))


# distribution -> module, for the project's own dependencies and the [gpu] extra: a CUDA image
# with PyTorch often lacks the small ones (seen on an H200 image: tyro, plyfile, xatlas, ...)
NEEDED = (("tyro", "tyro"), ("plyfile", "plyfile"), ("fast-simplification", "fast_simplification"),
          ("xatlas", "xatlas"), ("opencv-python-headless", "cv2"), ("scikit-image", "skimage"), ("scipy", "scipy"),
          ("tqdm", "tqdm"), ("pillow", "PIL"), ("ninja", "ninja"), ("numpy", "numpy"),
          ("gsplat", "gsplat"), ("diffrp-nvdiffrast", "nvdiffrast.torch"), ("packaging", "packaging"))


def cmd_missing():
    """Distributions among NEEDED whose import fails, one a line."""
    import importlib
    for dist, mod in NEEDED:
        try:
            importlib.import_module(mod)
        except Exception:
            print(dist)


def cmd_record(steps, name, gpu, status, seconds, reason, log, extra=""):
    rec = {"name": name, "gpu": gpu == "1", "status": status, "seconds": round(float(seconds), 2),
           "reason": reason or None, "log": log or None, "output_tail": tail(log) if log else ""}
    if extra and Path(extra).is_file():
        try:
            rec["result"] = json.loads(Path(extra).read_text())
        except Exception as exc:
            rec["result_error"] = f"unreadable {extra}: {exc}"
    res = rec.get("result") or {}
    # a GPU step that ran without CUDA and only skipped (pytest -m gpu): skipped, with the count
    if name == "gpu_tests" and status == "ok" and res.get("collected") is not None:
        if res.get("passed", 0) == 0 and res.get("skipped", 0) == res["collected"]:
            rec["status"] = "skipped"
            rec["reason"] = (f"{reason}: " if reason else "") + f"{res['collected']} gpu tests collected, all skipped"
    if name.startswith("bench") and rec["status"] == "ok":
        skipped = [f"{c['backend']}: {c.get('reason')}" for c in res.get("cases", []) if c.get("status") == "skipped"]
        if skipped:
            rec["reason"] = "; ".join(skipped)
    with open(steps, "a") as f:
        f.write(json.dumps(rec) + "\n")
    line = f"   -> {rec['status']} ({rec['seconds']:.1f} s)" + (f": {rec['reason']}" if rec["reason"] else "")
    print(line)


def cmd_pytest_summary(junit, collect_log, out):
    res = {}
    m = re.search(r"(\d+)(?:/\d+)? tests? collected", Path(collect_log).read_text(errors="replace")) if Path(collect_log).exists() else None
    if m:
        res["collected"] = int(m.group(1))
    elif Path(collect_log).exists() and "no tests ran" in Path(collect_log).read_text(errors="replace"):
        res["collected"] = 0
    try:
        s = ET.parse(junit).getroot()
        s = s if s.tag == "testsuite" else s.find("testsuite")
        n, f, e, k = (int(s.get(a, 0)) for a in ("tests", "failures", "errors", "skipped"))
        res.update(ran=n, failed=f, errors=e, skipped=k, passed=n - f - e - k)
        res["skip_reasons"] = sorted({sk.get("message", "") for sk in s.iter("skipped")})
        res["failed_tests"] = [f"{tc.get('classname')}::{tc.get('name')}" for tc in s.iter("testcase")
                               if tc.find("failure") is not None or tc.find("error") is not None]
    except Exception as exc:
        res["junit_error"] = f"{type(exc).__name__}: {exc}"
    Path(out).write_text(json.dumps(res, indent=1))


def cmd_train_summary(log, run, wall, out):
    res = {"wall_s": float(wall)}
    text = Path(log).read_text(errors="replace") if Path(log).exists() else ""
    m = re.search(r"trained (\d+) steps in ([\d.]+) s; (\d+) Gaussians", text)
    if m:
        res.update(trained_steps=int(m.group(1)), train_s=float(m.group(2)), n_gaussians=int(m.group(3)))
    tl = Path(run) / "train_log.jsonl"
    if tl.exists():
        lines = [ln for ln in tl.read_text().splitlines() if ln.strip()]
        if lines:
            last = json.loads(lines[-1])
            res["last_logged_step"], res["last_logged_elapsed_s"] = last.get("step"), last.get("elapsed_s")
    mj = Path(run) / "metrics.json"
    if mj.exists():
        met = json.loads(mj.read_text())
        res["nvs_psnr"] = met.get("nvs_psnr")
        res["relight_psnr_obj_mean"] = (met.get("relight_psnr_obj") or {}).get("mean")
    cfg = Path(run) / "config.json"
    if cfg.exists():
        c = json.loads(cfg.read_text())
        res["device"], res["backend"] = c.get("device"), c.get("backend")
    Path(out).write_text(json.dumps(res, indent=1))


def fmt(v, unit=""):
    if isinstance(v, float):
        v = f"{v:.1f}" if abs(v) >= 10 else f"{v:.3g}"
    return f"{v}{unit}"


def cmd_report(out, mode, dry, started, elapsed, budget, python, wheels, scene, repo):
    out = Path(out)
    meta = {"mode": mode, "dry_run": dry == "1", "started": started, "elapsed_s": round(float(elapsed), 1),
            "budget_s": int(budget), "python": python, "wheels": wheels or None, "scene": scene or None,
            "repo": repo}
    steps = [json.loads(ln) for ln in (out / "steps.jsonl").read_text().splitlines() if ln.strip()]
    by = {s["name"]: s for s in steps}
    env = {}
    if (out / "environment.json").exists():
        env = json.loads((out / "environment.json").read_text())
    no_cuda = not env.get("cuda_available")

    def why(step_name):
        s = by.get(step_name)
        if s is None:
            return f"{NOT_GPU} (step not started)"
        if s["status"] == "skipped":
            r = s.get("reason") or ""
            if r.startswith("budget"):
                return f"{NOT_GPU} (budget spent before this step)"
            if no_cuda and s["gpu"]:
                return f"{NOT_GPU} (no CUDA)"
            return f"{NOT_GPU} ({r})" if r else NOT_GPU
        if s["status"] == "failed":
            r = s.get("result") or {}
            if r.get("last_logged_step"):  # a training run stopped early: its rate so far
                return (f"{NOT_GPU} (step failed: {s.get('reason')}; reached step {r['last_logged_step']} "
                        f"after {r['last_logged_elapsed_s']:.0f} s of training)")
            return f"{NOT_GPU} (step failed: {s.get('reason')})"
        return None

    def case(step_name, kind, backend):
        s = by.get(step_name)
        for c in ((s or {}).get("result") or {}).get("cases", []):
            if c.get("kind") == kind and c.get("backend") == backend:
                return c
        return None

    figures = []

    def fig(key, label, value, unit, step_name):
        w = why(step_name)
        if w is None and value is None:
            w = f"{NOT_GPU} (no figure in the step's output)"
        figures.append({"key": key, "label": label, "value": None if w else value, "unit": unit,
                        "note": w, "step": step_name})

    def bench_fig(key, label, step, kind, backend, field):
        c = case(step, kind, backend)
        if c is not None and c.get("status") != "ok" and why(step) is None:
            figures.append({"key": key, "label": label, "value": None, "unit": "ms", "step": step,
                            "note": f"{NOT_GPU} ({c.get('status')}: {c.get('reason') or c.get('error')})"})
        else:
            fig(key, label, c.get(field) if c else None, "ms", step)

    bench_fig("splat_native_iter_ms", "splat iteration, native CUDA, 800^2, 300k Gaussians", "bench_splat", "splat", "native", "iter_ms")
    bench_fig("splat_gsplat_iter_ms", "splat iteration, gsplat, 800^2, 300k Gaussians", "bench_splat", "splat", "gsplat", "iter_ms")
    bench_fig("mesh_native_frame_ms", "mesh frame, native CUDA, 800^2, ~100k triangles", "bench_mesh", "mesh", "native", "frame_ms")
    bench_fig("mesh_nvdiffrast_frame_ms", "mesh frame, nvdiffrast, 800^2, ~100k triangles", "bench_mesh", "mesh", "nvdiffrast", "frame_ms")
    fig("cuda_ext_build_s", "JIT build of the native CUDA extension", by.get("cuda_ext_build", {}).get("seconds"), "s", "cuda_ext_build")
    t = (by.get("train_toybox") or {}).get("result") or {}
    fig("train_toybox_s", f"train on data/toybox ({t.get('trained_steps', 450)} steps, training only)", t.get("train_s"), "s", "train_toybox")
    t = (by.get("train_scene") or {}).get("result") or {}
    fig("train_scene_prd_s", "full PRD train on the 800^2 scene (training only)", t.get("train_s"), "s", "train_scene")
    fig("train_scene_wall_s", "full PRD train on the 800^2 scene (wall, with eval)", t.get("wall_s"), "s", "train_scene")
    gt = (by.get("gpu_tests") or {}).get("result") or {}
    fig("gpu_tests", "pytest -m gpu (passed / failed+errors / skipped)",
        f"{gt.get('passed')} / {gt.get('failed', 0) + gt.get('errors', 0)} / {gt.get('skipped')}" if "ran" in gt else None,
        "", "gpu_tests")
    ratio = None
    vals = {f["key"]: f["value"] for f in figures}
    if vals.get("splat_native_iter_ms") and vals.get("splat_gsplat_iter_ms"):
        ratio = vals["splat_native_iter_ms"] / vals["splat_gsplat_iter_ms"]
        figures.insert(2, {"key": "splat_native_over_gsplat", "label": "native / gsplat time ratio",
                           "value": ratio, "unit": "x", "note": None, "step": "bench_splat"})

    plumbing = []
    for name, label, get in (
        ("bench_splat_cpu_tiny", "CPU splat iteration (native, tiny)",
         lambda r: next((c.get("iter_ms") for c in r.get("cases", []) if c.get("backend") == "native"), None)),
        ("bench_mesh_cpu_tiny", "CPU mesh frame (native, tiny)",
         lambda r: next((c.get("frame_ms") for c in r.get("cases", []) if c.get("backend") == "native"), None)),
        ("train_cpu_tiny", "CPU train (tiny), training seconds", lambda r: r.get("train_s")),
    ):
        if name in by:
            plumbing.append({"key": name, "label": label, "value": get(by[name].get("result") or {}),
                             "status": by[name]["status"]})

    failed = [s["name"] for s in steps if s["status"] == "failed"]
    budget_skipped = [s["name"] for s in steps if s["status"] == "skipped" and (s.get("reason") or "").startswith("budget")]
    report = {**meta, "machine": env, "steps": steps, "figures": figures, "plumbing": plumbing,
              "failed_steps": failed, "budget_skipped_steps": budget_skipped,
              "result": "failed" if failed else "ok"}
    (out / "gpu_report.json").write_text(json.dumps(report, indent=1) + "\n")

    gpu = env.get("device_name") or ("no CUDA device" if no_cuda else "?")
    md = [f"# invrender GPU check ({meta['mode']})", "",
          f"- started: {meta['started']}; wall time {meta['elapsed_s']:.0f} s of a {meta['budget_s']} s budget"
          + (" (**budget spent**: steps not started: " + ", ".join(budget_skipped) + ")" if budget_skipped else ""),
          f"- machine: {env.get('hostname')}, {env.get('cpu_count')} CPUs, {env.get('mem_total_gib')} GiB RAM; "
          f"GPU: {gpu}" + (f", {env.get('device_memory_gib')} GiB, sm {env.get('device_capability')}" if not no_cuda else ""),
          f"- nvidia-smi: {'; '.join(env.get('nvidia_smi') or ['not found'])}",
          f"- torch {env.get('version_torch')} (CUDA {env.get('torch_cuda')}), cuda available: {env.get('cuda_available')}; "
          f"nvcc: {env.get('nvcc_version') or 'not found'}",
          f"- gsplat {env.get('version_gsplat')}, diffrp-nvdiffrast {env.get('version_diffrp-nvdiffrast')} (before installs)",
          f"- result: **{report['result']}**" + (f" (failed: {', '.join(failed)})" if failed else ""),
          "", "## Figures", "", "| figure | value |", "|---|---|"]
    for f in figures:
        md.append(f"| {f['label']} | {fmt(f['value'], ' ' + f['unit'] if f['unit'] else '') if f['note'] is None else f['note']} |")
    if plumbing:
        md += ["", "## CPU plumbing (dry run, tiny sizes: not GPU figures)", "", "| check | status | value |", "|---|---|---|"]
        for p in plumbing:
            md.append(f"| {p['label']} | {p['status']} | {fmt(p['value'], ' ms' if 'bench' in p['key'] else ' s') if p['value'] is not None else '-'} |")
    md += ["", "## Steps", "", "| step | GPU | status | seconds | note |", "|---|---|---|---|---|"]
    for s in steps:
        note = (s.get("reason") or "").replace("|", "\\|").replace("\n", " ")
        md.append(f"| {s['name']} | {'yes' if s['gpu'] else ''} | {s['status']} | {s['seconds']:.1f} | {note} |")
    bad = [s for s in steps if s["status"] == "failed"]
    if bad:
        md += ["", "## Output of the failed steps"]
        for s in bad:
            md += ["", f"### {s['name']}", "", "```", s["output_tail"], "```"]
    md += ["", f"Full logs: `{out / 'logs'}`; machine-readable: `gpu_report.json`."]
    if "train_scene" in by and by["train_scene"]["status"] == "skipped":
        md += ["", "The full PRD timing needs an 800^2 scene: `python scripts/make_synthetic.py --res 800 "
               "--n-train 100 --n-test 200 --out DIR` (Mitsuba, hours on CPU), then `--scene DIR` and a "
               "budget that fits a full run (e.g. `--budget-s 7200`)."]
    (out / "gpu_report.md").write_text("\n".join(md) + "\n")
    print(f"wrote {out / 'gpu_report.json'} and {out / 'gpu_report.md'}")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"env": cmd_env, "get": cmd_get, "missing": cmd_missing, "record": cmd_record,
     "pytest-summary": cmd_pytest_summary, "train-summary": cmd_train_summary,
     "report": cmd_report}[cmd](*args)
PYEOF
helper() { "$PY" "$HELPER" "$@"; }

# ------------------------------------------------------------------------------------------
# step machinery
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
STARTED="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
T_START="$(now)"
ANY_FAILED=0
STEP_RC=0
STEP_S=0

# record NAME GPU(0|1) STATUS SECONDS REASON [LOG] [EXTRA_JSON]
record() {
    helper record "$STEPS" "$1" "$2" "$3" "$4" "$5" "${6:-}" "${7:-}"
    [[ "$3" != failed ]] || ANY_FAILED=1
}

skip() {  # skip NAME GPU REASON
    echo "== $1"
    record "$1" "$2" skipped 0 "$3"
}

# run NAME GPU CAP_S EXTRA_JSON -- CMD...   (EXTRA_JSON: a file the command writes, or "")
# runs CMD with its output in logs/NAME.log, stopped at min(CAP_S, budget left), and records
# the step; sets STEP_RC (125: not started, budget spent), STEP_STATUS, STEP_REASON, STEP_S.
# With DEFER=1 the caller records the step itself (after summarizing its output).
run() {
    local name=$1 gpu=$2 cap=$3 extra=$4
    shift 5
    local left=$(( BUDGET - SECONDS ))
    STEP_S=0
    if (( left <= 0 )); then
        echo "== $name: skipped (budget of ${BUDGET} s spent)"
        record "$name" "$gpu" skipped 0 "budget of ${BUDGET} s spent before the step could start"
        STEP_RC=125 STEP_STATUS=skipped STEP_NOTE="" DEFER=0
        return 0
    fi
    local limit=$left
    if (( cap > 0 && cap < limit )); then limit=$cap; fi
    local log="$LOGS/$name.log" t0 rc=0
    echo "== $name (limit ${limit} s): $*"
    t0="$(now)"
    timeout --kill-after=15 "$limit" "$@" >"$log" 2>&1 </dev/null || rc=$?
    STEP_S="$(since "$t0")"
    STEP_RC=$rc STEP_STATUS=ok STEP_REASON=""
    if (( rc == 124 || rc == 137 )); then
        STEP_STATUS=failed
        if (( limit == left )); then STEP_REASON="stopped at the budget (${BUDGET} s) after ${limit} s"
        else STEP_REASON="timed out after ${limit} s"; fi
    elif (( rc != 0 )); then
        STEP_STATUS=failed STEP_REASON="exit status $rc"
    fi
    if [[ -n "${STEP_NOTE:-}" ]]; then STEP_REASON="${STEP_REASON:+$STEP_REASON; }$STEP_NOTE"; fi
    STEP_NOTE=""
    if [[ -z "$extra" || ! -f "$extra" ]]; then extra=""; fi
    if [[ "${DEFER:-0}" == 1 ]]; then DEFER=0; return 0; fi
    record "$name" "$gpu" "$STEP_STATUS" "$STEP_S" "$STEP_REASON" "$log" "$extra"
}

write_report() {
    helper report "$OUT" "$MODE" "$DRY" "$STARTED" "$(since "$T_START")" "$BUDGET" "$PY" "$WHEELS" "$SCENE" "$ROOT" \
        || echo "gpu_check.sh: writing the report failed" >&2
}
MODE="gpu"
if [[ $DRY == 1 ]]; then MODE="dry-run"; fi
trap 'rc=$?; trap - EXIT; write_report; exit $rc' EXIT

# ------------------------------------------------------------------------------------------
# 1. environment
run environment 0 120 "" -- "$PY" "$HELPER" env "$OUT/environment.json"
CUDA="$(helper get "$OUT/environment.json" cuda_available)"
NVCC="$(helper get "$OUT/environment.json" nvcc)"
NO_CUDA_EXIT=0
if [[ "$CUDA" != 1 && $DRY == 0 ]]; then
    echo "gpu_check.sh: no CUDA device (torch.cuda.is_available() is False): running as a dry run" >&2
    DRY=1 MODE="dry-run (no CUDA found)" NO_CUDA_EXIT=1
fi
if [[ "$CUDA" != 1 ]]; then GPU_SKIP="no CUDA (torch.cuda.is_available() is False)"; else GPU_SKIP="dry run"; fi
GPU_OK=0
if [[ $DRY == 0 && "$CUDA" == 1 ]]; then GPU_OK=1; fi

# 2. wheels: only what is missing, into $PY's environment, torch pinned to the installed build
MISSING="$(helper missing | tr '\n' ' ' | sed 's/ *$//')"
if [[ -z "$MISSING" ]]; then
    skip install_wheels 0 "the dependencies and the [gpu] extra are importable: nothing to install"
elif [[ -z "$WHEELS" ]]; then
    skip install_wheels 0 "no --wheels DIR given; would install: $MISSING"
elif [[ ! -d "$WHEELS" ]]; then
    skip install_wheels 0 "wheels folder $WHEELS not found; would install: $MISSING"
else
    TORCH_V="$(helper get "$OUT/environment.json" version_torch)"
    CONSTRAINTS="$LOGS/constraints.txt"
    : >"$CONSTRAINTS"
    [[ -z "$TORCH_V" ]] || echo "torch==$TORCH_V" >"$CONSTRAINTS"
    # shellcheck disable=SC2086  # MISSING is a list of package names
    PIP=("$PY" -m pip install --no-index --find-links "$WHEELS" -c "$CONSTRAINTS" $MISSING)
    if [[ $DRY == 1 ]]; then
        STEP_NOTE="dry run: pip --dry-run of $MISSING from $WHEELS"
        run install_wheels 0 120 "" -- "${PIP[@]}" --dry-run
    else
        STEP_NOTE="installed $MISSING from $WHEELS"
        # pip resolves everything before it installs anything: a missing wheel installs nothing
        run install_wheels 0 300 "" -- bash -c '"${@:3}" || exit $?; still="$("$1" "$2" missing)"
            if [[ -n "$still" ]]; then echo "not importable after the install: $still"; exit 1; fi' \
            _ "$PY" "$HELPER" "${PIP[@]}"
    fi
fi

# 3. nvcc compile check of every CUDA source (standalone, as tests/test_nvcc.py)
if [[ -n "$NVCC" ]]; then
    OBJ="$LOGS/nvcc_obj"
    mkdir -p "$OBJ"
    run nvcc_compile 0 300 "" -- bash -c 'set -e; for s in "$2"/*.cu; do echo "nvcc -c $s"; "$1" -c "$s" -I "$2" -o "$3/$(basename "$s" .cu).o"; done; echo "compiled $(ls "$3" | wc -l) sources"' \
        _ "$NVCC" "$ROOT/cuda" "$OBJ"
    rm -rf "$OBJ"
else
    skip nvcc_compile 0 "nvcc not found (PATH or \$CUDA_HOME/bin)"
fi

# 4. JIT build of the native CUDA extension
if [[ $GPU_OK == 1 ]]; then
    CACHED="$(ls "${INVRENDER_CACHE:-$HOME/.cache/invrender}"/torch_extensions/cuda/*/*.so 2>/dev/null | head -1 || true)"
    if [[ -n "$CACHED" ]]; then STEP_NOTE="a previous build was cached: the time is not a fresh build"; fi
    INVRENDER_VERBOSE_BUILD=1 run cuda_ext_build 1 420 "" -- "$PY" -c \
        "from invrender.splat.native import load_extension; m = load_extension('cuda'); print('built', m.__file__)"
else
    skip cuda_ext_build 1 "$GPU_SKIP"
fi

# 5. the gpu-marked tests (they skip without CUDA; a dry run hides the device from them)
NOCUDA_ENV=()
[[ $GPU_OK == 1 ]] || NOCUDA_ENV=(env CUDA_VISIBLE_DEVICES=)
DEFER=1 run gpu_tests_collect 0 120 "" -- "${NOCUDA_ENV[@]}" "$PY" -m pytest -m gpu --collect-only -q -p no:cacheprovider tests
JUNIT="$LOGS/gpu_tests.xml"
[[ $GPU_OK == 1 ]] || STEP_NOTE="$GPU_SKIP"
# -v and a stack dump after 240 s: a step stopped at its limit still says which test it was in and where
DEFER=1 run gpu_tests 1 600 "" -- "${NOCUDA_ENV[@]}" "$PY" -m pytest -m gpu -v -rs --durations=0 -p no:cacheprovider \
    -o faulthandler_timeout=240 --junitxml="$JUNIT" tests
if [[ $STEP_RC != 125 ]]; then
    helper pytest-summary "$JUNIT" "$LOGS/gpu_tests_collect.log" "$LOGS/gpu_tests.json" || true
    if [[ $STEP_STATUS == ok && ! -s "$JUNIT" ]]; then STEP_STATUS=failed STEP_REASON="pytest wrote no junit report"; fi
    record gpu_tests 1 "$STEP_STATUS" "$STEP_S" "$STEP_REASON" "$LOGS/gpu_tests.log" "$LOGS/gpu_tests.json"
fi

# 6. benchmarks
BENCH=("$PY" "$ROOT/scripts/gpu_bench.py")
if [[ $GPU_OK == 1 ]]; then
    STEP_NOTE="first use of the backends (gsplat / nvdiffrast may JIT-build here)"
    run backend_warmup 1 420 "" -- "${BENCH[@]}" --device cuda --gaussians 2000 --size 64 --faces 2000 --warmup 0 --repeats 1
    run bench_splat 1 240 "$OUT/bench_splat.json" -- "${BENCH[@]}" --device cuda --what splat --backends native,gsplat \
        --gaussians 300000 --size 800 --warmup 3 --repeats 10 --json "$OUT/bench_splat.json"
    # scripts/bench_mesh_raster.py is CPU-only (no device option): gpu_bench.py's mesh mode times the CUDA paths
    run bench_mesh 1 240 "$OUT/bench_mesh.json" -- "${BENCH[@]}" --device cuda --what mesh --mesh-backends native,nvdiffrast \
        --faces 100000 --size 800 --warmup 3 --repeats 10 --json "$OUT/bench_mesh.json"
else
    skip backend_warmup 1 "$GPU_SKIP"
    skip bench_splat 1 "$GPU_SKIP"
    run bench_splat_cpu_tiny 0 120 "$OUT/bench_splat_cpu_tiny.json" -- "${BENCH[@]}" --device cpu --what splat \
        --backends native,gsplat --gaussians 2000 --size 64 --warmup 1 --repeats 3 --json "$OUT/bench_splat_cpu_tiny.json"
    skip bench_mesh 1 "$GPU_SKIP"
    run bench_mesh_cpu_tiny 0 120 "$OUT/bench_mesh_cpu_tiny.json" -- "${BENCH[@]}" --device cpu --what mesh \
        --mesh-backends native,nvdiffrast --faces 2000 --size 64 --warmup 1 --repeats 3 --json "$OUT/bench_mesh_cpu_tiny.json"
fi

# 7. end-to-end training
train_step() {  # train_step NAME GPU CAP RUN_DIR -- train args...
    local name=$1 gpu=$2 cap=$3 rundir=$4
    shift 5
    DEFER=1 run "$name" "$gpu" "$cap" "" -- "${INVRENDER[@]}" train --out "$rundir" --no-progress "$@"
    if [[ $STEP_RC != 125 ]]; then
        helper train-summary "$LOGS/$name.log" "$rundir" "$STEP_S" "$LOGS/$name.json" || true
        record "$name" "$gpu" "$STEP_STATUS" "$STEP_S" "$STEP_REASON" "$LOGS/$name.log" "$LOGS/$name.json"
    fi
}
if [[ $GPU_OK == 1 ]]; then
    train_step train_toybox 1 300 "$OUT/train_toybox" -- --data "$ROOT/data/toybox" --device cuda --steps 300 \
        --distill.specular-steps 50 --distill.diffuse-steps 50 --distill.joint-steps 50
else
    skip train_toybox 1 "$GPU_SKIP"
    train_step train_cpu_tiny 0 180 "$OUT/train_cpu_tiny" -- --data "$ROOT/data/toybox" --device cpu --steps 20 \
        --distill.specular-steps 3 --distill.diffuse-steps 3 --distill.joint-steps 3 \
        --distill.ao.grid-resolution 24 --distill.ao.num-directions 8 --distill.mesh-normal-resolution 48 \
        --downscale 2 --init-num-points 2000
fi
MAKE_SCENE="python scripts/make_synthetic.py --res 800 --n-train 100 --n-test 200 --out DIR"
if [[ -z "$SCENE" ]]; then
    skip train_scene 1 "no --scene DIR given (make one with: $MAKE_SCENE; hours on CPU)"
elif [[ ! -f "$SCENE/transforms_train.json" ]]; then
    skip train_scene 1 "--scene $SCENE holds no transforms_train.json (make one with: $MAKE_SCENE)"
elif [[ $GPU_OK != 1 ]]; then
    skip train_scene 1 "$GPU_SKIP"
else
    train_step train_scene 1 0 "$OUT/train_scene" -- --data "$SCENE" --device cuda
fi

# ------------------------------------------------------------------------------------------
echo "== done in $(since "$T_START") s"
(( ANY_FAILED == 0 )) || exit 1
(( NO_CUDA_EXIT == 0 )) || exit 3
exit 0
