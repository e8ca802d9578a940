"""Wall time of ``unsolo train`` against an earlier commit, side by side, alternated.

Generates 192 px synthetic scenes (their ground truth serves as the labels: the cost of a training iteration does not
depend on where the labels come from), checks the baseline commit out into a temporary git worktree, and runs the
same command line ``--repeats`` times with each code base, alternating (A B A B ...), each in a fresh process with
the same environment. Prints one JSON line per run and a summary: median wall seconds of each side and their ratio
(candidate / baseline), with the CPU model and its bf16 flags.

The candidate runs with its defaults (``solver.precision=auto``) unless ``--candidate-set`` says otherwise; the
baseline has no precision option (float32). Nothing else may run on the machine meanwhile.

Example (the project's throughput check: small_r18, 192 px scenes, 30 iterations)::

    python bench/train_wall.py --baseline 1681f5c --iters 30 --repeats 3
    python bench/train_wall.py --baseline 1681f5c --iters 30 --repeats 3 --candidate-set solver.precision=float32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_description() -> dict:
    """CPU model (with its family and model numbers: VMs often show only "AMD EPYC") and the flags that decide bf16
    speed."""
    model, flags, ids = "unknown", set(), {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() in ("cpu family", "model"):
                ids.setdefault(key.strip(), value.strip())
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    if ids:
        model += f" (family {ids.get('cpu family', '?')}, model {ids.get('model', '?')})"
    wanted = ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]
    return {"cpu": model, "flags": [f for f in wanted if f in flags], "cores": os.cpu_count()}


def run_once(code: Path, data: Path, out: Path, args, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "unsolo", "train", str(data / "images"), "--labels", str(data / "annotations.json"),
           "--out", str(out), "--preset", args.preset, "--iters", str(args.iters), "--device", "cpu",
           "--no-resume", "--set", f"solver.checkpoint_period={args.iters + 1}"]
    for item in args.set + extra:
        cmd += ["--set", item]
    env = dict(os.environ, PYTHONPATH=str(code))
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=code, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"train failed in {code}:\n{proc.stderr[-2000:]}")
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="1681f5c", help="git commit of the baseline (float32, before the engine)")
    ap.add_argument("--preset", default="small_r18")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--set", action="append", default=[], help="--set for both sides")
    ap.add_argument("--candidate-set", action="append", default=[], help="--set for the candidate only")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="train_wall_"))
    data = work / "data"
    subprocess.run([sys.executable, "-m", "unsolo", "synth", str(data), "--num-images", str(args.images), "--size",
                    str(args.size), "--seed", "0"], check=True, cwd=ROOT, capture_output=True,
                   env=dict(os.environ, PYTHONPATH=str(ROOT)))
    base = work / "baseline"
    subprocess.run(["git", "worktree", "add", "--detach", str(base), args.baseline], check=True, cwd=ROOT,
                   capture_output=True)
    try:
        walls: dict[str, list[float]] = {"baseline": [], "candidate": []}
        for k in range(args.repeats):
            for side, code, extra in (("baseline", base, []), ("candidate", ROOT, args.candidate_set)):
                w = run_once(code, data, work / f"run_{side}", args, extra)
                walls[side].append(w)
                print(json.dumps({"repeat": k, "side": side, "wall_s": round(w, 2)}), flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, capture_output=True)
    med = {side: statistics.median(v) for side, v in walls.items()}
    print(json.dumps({
        "command": f"unsolo train --preset {args.preset} --iters {args.iters} ({args.images} scenes of {args.size} px)",
        "baseline": args.baseline, "candidate_set": args.candidate_set, "set": args.set,
        "median_wall_s": {k: round(v, 2) for k, v in med.items()},
        "all_wall_s": {k: [round(x, 2) for x in v] for k, v in walls.items()},
        "ratio": round(med["candidate"] / med["baseline"], 3), **cpu_description(),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
