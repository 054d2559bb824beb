"""Orchestration cost at scale, through the real flow, with the simulated engine (``model.engine: sim``).

    python bench/scale.py [--workers 1 2 4 8] [--scaling-shards 200] [--growth 100 1000 10000]
                          [--skip-scaling] [--skip-growth] [--skip-rerun]

- scaling: the Ray executor on a local cluster of 8 logical CPUs, at most N engine stages at once
  (``ray.max_engines``), 200 shards of 4 problems, 1.0 s of simulated engine time per shard:
  throughput (shards/s over the shard phase) and efficiency (throughput at N / N x throughput at 1);
  the same in the steady state (from the last engine worker's first shard to the first worker's last
  one: the cluster's and the workers' start-up left out); and the CPU seconds each role of process
  (Ray workers, Ray's services, the Prefect server, the flow, verifier pools) used.
- growth: the local executor, 100, 1,000 and 10,000 shards of 4 problems, 0.01 s of engine time per
  shard: orchestration per shard (the run's wall time minus the union of the engine, verify and
  write busy intervals of run.json's stage timeline, over the shard count), peak RSS of the flow
  process (and per phase), the size of run.json and of the Prefect database, and the wall time of the whole
  `expo-data run` command when every shard is already done.

Each run is a child process with its own Prefect home (a temporary server and a fresh database),
running the generate flow as `expo-data run` does. The last lines are one figure each:
``efficiency@8``, ``steady_efficiency@8``, ``orchestration_ms_per_shard@10000``, ``orchestration_growth_1000_to_10000``,
``rss_ratio_1000_to_10000``, ``rerun_s@10000`` (with the largest counts asked for in their place).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import ClassVar

ROOT = Path(__file__).resolve().parents[1]
EXPO = Path(sys.executable).parent / "expo-data"
PER_SHARD = 4


def _problems(path: Path, n: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            a, b = 10 + i % 89, 7 + (i * 31) % 83
            q = f"Problem {i}: what is ${a}+{b}$?"
            f.write(json.dumps({"problem": q, "solution": f"${a}+{b}=\\boxed{{{a + b}}}$", "level": "Level 1"}) + "\n")


def _config(
    folder: Path, shards: int, seconds: float, executor: str, workers: int | None, cpus_per_engine: float = 1.0
) -> Path:
    problems = folder / "problems.jsonl"
    _problems(problems, shards * PER_SHARD)
    ray = (
        f"\nray:\n  num_cpus: 8\n  max_engines: {workers}\n  cpus_per_engine: {cpus_per_engine}\n"
        if executor == "ray"
        else ""
    )
    text = f"""name: scale
output_dir: {folder / "run"}
model:
  path: {ROOT / "data" / "tiny-model"}
  engine: sim
  max_model_len: 1024
  sim:
    seconds_per_call: {seconds}
    text_tokens: 24
problems:
  source: {problems}
generation:
  rollouts: 4
  explanations: 2
  sampling:
    temperature: 0.7
    max_tokens: 64
    seed: 0
verifier:
  workers: 1
shard_size: {PER_SHARD}
executor: {executor}{ray}
"""
    path = folder / "config.yaml"
    path.write_text(text)
    return path


def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def _steady_throughput(shards) -> float:
    """Shards per second once every engine worker has started and before the first one runs out
    of work: [latest first start, earliest last end] over the workers' stage stamps, so the
    cluster's and the workers' start-up (paid once per worker) and the tail are left out."""
    spans: dict[int, list[float]] = {}
    ends = []
    for rec in shards:
        st = rec["stages"]
        start, end = st["generate"][0], st["write"][1]
        span = spans.setdefault(rec["engine"]["pid"], [start, end])
        span[0], span[1] = min(span[0], start), max(span[1], end)
        ends.append(end)
    lo, hi = max(a for a, _ in spans.values()), min(b for _, b in spans.values())
    if len(spans) == 1:
        lo = min(a for a, _ in spans.values())
    done = sum(lo < e <= hi for e in ends)
    return done / (hi - lo) if hi > lo else float("nan")


class _RssByPhase:
    """Peak RSS of this process per phase of the run, the phase named by the last progress event:
    where the flow process's memory goes."""

    NAMES: ClassVar[dict[str, str]] = {
        "problems.start": "problems",
        "shards.planned": "shards",
        "build.start": "build",
        "build.swap": "summary+report",
    }

    def __init__(self) -> None:
        import threading

        import psutil

        from pipeline import progress

        self.peaks: dict[str, float] = {}
        self.phase = "start"
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self._unsubscribe = progress.subscribe(self._event)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _event(self, event: str, data: dict) -> None:
        self._note()
        self.phase = self.NAMES.get(event, self.phase)

    def _note(self) -> None:
        mib = self._proc.memory_info().rss / 2**20
        self.peaks[self.phase] = round(max(self.peaks.get(self.phase, 0.0), mib), 1)

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self._note()

    def stop(self) -> None:
        self._stop.set()
        self._unsubscribe()
        self._note()


def child(config: str) -> None:
    """One run of the generate flow in this process, as `expo-data run` runs it; prints a JSON line."""
    from flows.generate import generate_flow
    from flows.server import ensure_api
    from pipeline.store import RunDir

    ensure_api()
    phases = _RssByPhase()
    t0 = time.time()
    run = RunDir(generate_flow(config))
    wall = time.time() - t0
    phases.stop()
    doc = json.loads(run.run_json.read_text())
    busy = [
        tuple(stage)
        for s in doc["shards"].values()
        for name, stage in s.get("stages", {}).items()
        if name in ("generate", "score", "verify", "write")
    ]
    busy_s = _union([(a, b) for a, b in busy if a >= t0 - 1])
    t = doc["timings"]
    print(
        "RESULT "
        + json.dumps(
            {
                "wall_s": wall,
                "busy_s": busy_s,
                "shards": len(doc["shards"]),
                "shards_s": t["shards_s"],
                "problems_s": t["problems_s"],
                "build_s": t["build_s"],
                "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "rss_by_phase_mib": phases.peaks,
                "steady_shards_per_s": _steady_throughput(doc["shards"].values()),
                "run_json_bytes": run.run_json.stat().st_size,
            }
        ),
        flush=True,
    )


ROLES = (
    ("ray::", "ray workers"),
    ("default_worker.py", "ray workers"),
    ("pipeline.verify_worker", "verifier pools"),
    ("uvicorn", "prefect server"),
    ("--child", "flow process"),
)


def _role(cmdline: str) -> str:
    for needle, role in ROLES:
        if needle in cmdline:
            return role
    return "ray services" if "ray" in cmdline else "other"


def _run_child(config: Path, home: Path, timeout: float) -> dict:
    import psutil

    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # a temporary server per run
    env |= {"PREFECT_HOME": str(home), "PREFECT_LOGGING_LEVEL": "WARNING"}
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # CPU seconds of every process the run started, by role, read once a second until it ends
    # (a process's last second before it exits is lost: a few tenths of a second in all).
    import threading

    cpu: dict[int, tuple[str, float]] = {}

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                family = [root, *root.children(recursive=True)]
            except psutil.Error:
                break
            for p in family:
                try:
                    t = p.cpu_times()
                    cpu[p.pid] = (_role(" ".join(p.cmdline())), t.user + t.system)
                except psutil.Error:
                    pass
            time.sleep(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    sampler.join()
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"run failed ({proc.returncode}):\n{stdout[-3000:]}\n{stderr[-3000:]}")
    out = json.loads(lines[-1][7:])
    roles: dict[str, float] = {}
    for role, seconds in cpu.values():
        roles[role] = round(roles.get(role, 0.0) + seconds, 1)
    out["cpu_s_by_role"] = dict(sorted(roles.items(), key=lambda kv: -kv[1]))
    db = [home / f"prefect.db{suffix}" for suffix in ("", "-wal", "-shm")]  # SQLite's write-ahead log too
    out["prefect_db_bytes"] = sum(f.stat().st_size for f in db if f.exists())
    return out


def _rerun(config: Path, home: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(home)}
    t0 = time.time()
    proc = subprocess.run([str(EXPO), "run", str(config)], env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"rerun failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--scaling-shards", type=int, default=200)
    ap.add_argument("--scaling-seconds", type=float, default=1.0)
    ap.add_argument(
        "--cpus-per-engine",
        type=float,
        default=1.0,
        help="CPUs each engine stage reserves (the simulated engine sleeps: 0.5 leaves 4 of the 8 for verifier stages)",
    )
    ap.add_argument("--growth", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--growth-seconds", type=float, default=0.01)
    ap.add_argument("--skip-scaling", action="store_true")
    ap.add_argument("--skip-growth", action="store_true")
    ap.add_argument("--skip-rerun", action="store_true")
    ap.add_argument("--keep", help="keep the run folders under this folder")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    base = Path(args.keep or tempfile.mkdtemp(prefix="expo-scale-"))
    base.mkdir(parents=True, exist_ok=True)
    figures: dict[str, float] = {}
    if not args.skip_scaling:
        throughput: dict[int, float] = {}
        steady: dict[int, float] = {}
        for n in args.workers:
            folder = base / f"scaling-{n}"
            folder.mkdir(exist_ok=True)
            config = _config(folder, args.scaling_shards, args.scaling_seconds, "ray", n, args.cpus_per_engine)
            r = _run_child(config, folder / "prefect", timeout=3600)
            throughput[n] = r["shards"] / r["shards_s"]
            steady[n] = r["steady_shards_per_s"]
            eff = throughput[n] / (n * throughput[args.workers[0]] / args.workers[0])
            eff_steady = steady[n] / (n * steady[args.workers[0]] / args.workers[0])
            print(
                f"scaling: {n} engine worker(s), {r['shards']} shards: shard phase {r['shards_s']:.1f} s, "
                f"{throughput[n]:.2f} shards/s, efficiency {eff:.2f}; steady state {steady[n]:.2f} shards/s, "
                f"efficiency {eff_steady:.2f}; CPU s by role {r['cpu_s_by_role']} in {r['wall_s']:.0f} s",
                flush=True,
            )
        top = max(args.workers)
        figures[f"efficiency@{top}"] = throughput[top] / (top * throughput[args.workers[0]] / args.workers[0])
        figures[f"steady_efficiency@{top}"] = steady[top] / (top * steady[args.workers[0]] / args.workers[0])
    if not args.skip_growth:
        growth = {}
        for n in args.growth:
            folder = base / f"growth-{n}"
            folder.mkdir(exist_ok=True)
            config = _config(folder, n, args.growth_seconds, "local", None)
            r = _run_child(config, folder / "prefect", timeout=7200)
            r["orchestration_ms"] = 1000 * (r["wall_s"] - r["busy_s"]) / n
            growth[n] = r
            print(
                f"growth: {n} shards: wall {r['wall_s']:.1f} s, busy {r['busy_s']:.1f} s "
                f"(problems {r['problems_s']:.1f} s, shards {r['shards_s']:.1f} s, build {r['build_s']:.1f} s); "
                f"orchestration {r['orchestration_ms']:.1f} ms/shard; flow RSS {r['rss_mib']:.0f} MiB; "
                f"run.json {r['run_json_bytes'] / 1e6:.2f} MB; Prefect DB {(r['prefect_db_bytes'] or 0) / 1e6:.1f} MB; "
                f"peak RSS by phase {r['rss_by_phase_mib']}; CPU s by role {r['cpu_s_by_role']}",
                flush=True,
            )
        top = max(args.growth)
        mid = sorted(args.growth)[-2] if len(args.growth) > 1 else top
        figures[f"orchestration_ms_per_shard@{top}"] = growth[top]["orchestration_ms"]
        figures[f"orchestration_growth_{mid}_to_{top}"] = (
            growth[top]["orchestration_ms"] / growth[mid]["orchestration_ms"]
        )
        figures[f"rss_ratio_{mid}_to_{top}"] = growth[top]["rss_mib"] / growth[mid]["rss_mib"]
        if not args.skip_rerun:
            folder = base / f"growth-{top}"
            figures[f"rerun_s@{top}"] = _rerun(folder / "config.yaml", folder / "prefect")
    for name, value in figures.items():
        print(f"{name}: {value:.2f}")


if __name__ == "__main__":
    main()
