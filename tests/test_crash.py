"""Kill -9 a real run at its own progress markers, rerun, and get exactly the tables of a run that
was never interrupted."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
EXPO = Path(sys.executable).parent / "expo-data"
SETTINGS = [
    "model.engine=hf",
    "problems.limit=32",
    "shard_size=8",
    "generation.sampling.max_tokens=64",
]
TABLES = ("problems", "samples", "expert_scores", "dpo", "dpo_expert", "dpo_self", "grpo", "sft")


def _run(out: Path, events: Path, kill_at=None, timeout: float = 400) -> str:
    """Run the quickstart config into ``out``; with ``kill_at`` (a predicate on an event), SIGKILL
    the whole process group as soon as the run emits a matching event."""
    args = [str(EXPO), "run", str(ROOT / "data" / "quickstart.yaml"), "--set", f"output_dir={out}"]
    for s in SETTINGS:
        args += ["--set", s]
    env = {**os.environ, "EXPO_DATA_EVENTS": str(events)}
    proc = subprocess.Popen(
        args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True
    )
    deadline = time.monotonic() + timeout
    seen = 0
    while proc.poll() is None and time.monotonic() < deadline:
        if kill_at is not None and events.exists():
            lines = events.read_text().splitlines()
            for line in lines[seen:]:
                if kill_at(json.loads(line)):
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return "killed"
            seen = len(lines)
        time.sleep(0.01)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("run did not finish in time")
    output = proc.stdout.read()
    assert proc.returncode == 0, output
    assert kill_at is None, f"the run finished before its kill point:\n{output}"
    return "finished"


def _fingerprint(root: Path) -> dict[str, str]:
    """Every file of every table (hidden ones too), by content."""
    out = {}
    for table in TABLES:
        for f in sorted((root / table).rglob("*")) if (root / table).exists() else []:
            if f.is_file():
                out[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_sigkill_at_any_point_then_rerun_gives_the_uninterrupted_tables(tmp_path):
    baseline = tmp_path / "baseline"
    _run(baseline, tmp_path / "baseline.jsonl")
    crashed = tmp_path / "crashed"
    points = [
        ("mid-generation of shard 1", lambda e: e["event"] == "shard.start" and e["index"] == 1),
        ("while writing shard 3", lambda e: e["event"] == "shard.writing" and e["index"] == 3),
        ("mid-build", lambda e: e["event"] == "build.shard"),
        ("while swapping the built tables in", lambda e: e["event"] == "build.swap" and e["table"] == "grpo"),
    ]
    for i, (_, predicate) in enumerate(points):
        assert _run(crashed, tmp_path / f"crash-{i}.jsonl", kill_at=predicate) == "killed"
        assert json.loads((crashed / "run.json").read_text())["status"] == "running"
    _run(crashed, tmp_path / "final.jsonl")
    # Only unfinished shards were redone.
    first_rerun = _events(tmp_path / "crash-1.jsonl")
    assert [e["index"] for e in first_rerun if e["event"] == "shard.start"][:1] == [1]  # 0 was kept
    final = _events(tmp_path / "final.jsonl")
    assert [e["index"] for e in final if e["event"] == "shard.finished"] == [0, 1, 2, 3]
    assert not [e for e in final if e["event"] == "shard.start"]  # nothing regenerated
    # The same tables, file for file, and no temp or staging files left behind.
    assert _fingerprint(crashed) == _fingerprint(baseline)
    leftovers = [p.name for p in crashed.rglob("*") if p.name.startswith(".")]
    assert leftovers == []
    doc, base = (json.loads((d / "run.json").read_text()) for d in (crashed, baseline))
    assert doc["status"] == "complete" and doc["tables"] == base["tables"]


class _Crashing:
    """The real engine, except that generate() dies like a crashed GPU engine."""

    calls = 0

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, requests, call_seed=0):
        _Crashing.calls += 1
        raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated)")


def test_an_engine_crash_is_retried_with_a_fresh_engine_and_a_persistent_one_names_the_shard(
    prefect_harness, tmp_path, monkeypatch
):
    from flows.generate import generate_flow
    from pipeline import engines
    from pipeline.config import load_config
    from pipeline.errors import ShardFailedError

    config = str(ROOT / "data" / "quickstart.yaml")
    settings = ["model.engine=hf", "problems.limit=8", "generation.sampling.max_tokens=32", "retries.delay_s=0"]
    cfg = load_config(config, [f"output_dir={tmp_path / 'a'}", *settings])
    real = engines.load_engine(cfg.model, seed=cfg.generation.sampling.seed)
    engines.release_engines()
    engines._CACHE[engines.cache_key(cfg.model, cfg.generation.sampling.seed)] = _Crashing(real)
    _Crashing.calls = 0
    run_dir = generate_flow(config, [f"output_dir={tmp_path / 'a'}", *settings])  # 1 retry by default
    assert _Crashing.calls == 1
    assert json.loads((Path(run_dir) / "run.json").read_text())["status"] == "complete"

    engines.release_engines()  # the retry above cached a fresh, working engine
    monkeypatch.setattr(engines, "load_engine", lambda model_cfg, seed=0: _Crashing(real))
    _Crashing.calls = 0
    with pytest.raises(ShardFailedError, match=r"shard 0 \(problems 0\.\.7\) failed after 3 tries: RuntimeError: CUDA"):
        generate_flow(config, [f"output_dir={tmp_path / 'b'}", *settings, "retries.shards=2"])
    assert _Crashing.calls == 3
    engines.release_engines()


def test_prefect_cache_key_follows_our_done_marker(quickstart_run, tmp_path):
    import shutil

    from flows.executors import RESULT_FORMAT, _batch_cache_key, batches
    from pipeline import __version__
    from pipeline import stages as gen
    from pipeline.config import load_config
    from pipeline.store import RunDir

    cfg = load_config(ROOT / "data" / "quickstart.yaml", [f"output_dir={quickstart_run.root}"])
    plans = gen.plan_shards(cfg, quickstart_run)
    first, both = batches(plans[:1], 1)[0], batches(plans[:2], 1)[0]
    key = _batch_cache_key(None, {"batch": first, "run": quickstart_run})
    assert key.endswith(f"{__version__}-{RESULT_FORMAT}")
    assert _batch_cache_key(None, {"batch": both, "run": quickstart_run}) not in (None, key)  # keys of all its shards
    copy = RunDir(shutil.copytree(quickstart_run.root, tmp_path / "copy"))
    other = _batch_cache_key(None, {"batch": first, "run": copy})
    assert other is not None and other != key  # one run's cache never answers for another's
    copy.shard(plans[1].index).unlink()
    assert _batch_cache_key(None, {"batch": first, "run": copy}) == other
    assert _batch_cache_key(None, {"batch": both, "run": copy}) is None  # a shard not on disk: no cache hit


def _temporary_server(proc: subprocess.Popen, timeout: float = 120):
    """The uvicorn child that serves the run's temporary Prefect API, once it is up."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                if "uvicorn" in child.cmdline() and "prefect.server.api.server:create_app" in child.cmdline():
                    return child
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.2)
    pytest.fail("no temporary Prefect server was started")


def _gone(process, timeout: float) -> bool:
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.2)
    return False


def test_a_run_killed_alone_takes_its_temporary_prefect_server_with_it(tmp_path):
    """kill -9 of the run's process only (as the OOM killer does), not of its process group: the
    temporary Prefect server it started must not live on."""
    args = [str(EXPO), "run", str(ROOT / "data" / "quickstart.yaml"), "--set", f"output_dir={tmp_path / 'run'}"]
    for s in SETTINGS:
        args += ["--set", s]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "EXPO_DATA_EVENTS": str(tmp_path / "ev.jsonl")}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen(
        args, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        server = _temporary_server(proc)
        deadline = time.monotonic() + 120  # until the flow is running on it
        while not _events(tmp_path / "ev.jsonl") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _events(tmp_path / "ev.jsonl"), "the run never started"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert _gone(server, timeout=30), f"the temporary Prefect server (pid {server.pid}) outlived its run"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_shards_key_does_not_depend_on_where_the_model_folder_lies(tmp_path):
    """The key (and the sampling seed drawn from it) follows the weights and the model's name, not
    the checkout's path: the same run from two clones samples the same texts and reuses shards."""
    import shutil

    from pipeline.config import load_config
    from pipeline.manifest import model_fingerprint, shard_key
    from pipeline.prompts import get_template

    problems = [
        {"problem_id": "p", "question": "q", "answer": "1", "level": 1, "subject": "s", "expert_solution": None}
    ]
    keys = []
    for where in ("a/tiny-model", "b/deeper/tiny-model", "c/renamed"):
        model = tmp_path / where
        shutil.copytree(ROOT / "data" / "tiny-model", model)
        cfg = load_config(str(ROOT / "data" / "quickstart.yaml"), [f"model.path={model}", f"output_dir={tmp_path}"])
        fp = model_fingerprint(cfg.model.path, cfg.model.revision)
        keys.append(shard_key(cfg, fp, get_template(cfg.prompts.template), problems))
    assert keys[0] == keys[1] != keys[2]  # a renamed folder changes the `model` column, so the key


class _CrashOnce(_Crashing):
    """The real engine, dying once: on the second generate call of the run (shard 1's)."""

    def generate(self, requests, call_seed=0):
        _Crashing.calls += 1
        if _Crashing.calls == 2:
            raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated)")
        return self.inner.generate(requests, call_seed=call_seed)


def test_a_shard_retried_inside_its_batch_keeps_every_shard_record(prefect_harness, tmp_path, monkeypatch):
    """Shard 1 of a three-shard batch crashes once: the batch retries that shard, not the task, so
    the record of shard 0 (finished before) still reaches run.json."""
    from flows.generate import generate_flow
    from pipeline import engines

    config = str(ROOT / "data" / "quickstart.yaml")
    settings = [f"output_dir={tmp_path / 'run'}", "model.engine=hf", "problems.limit=12", "shard_size=4"]
    settings += ["generation.sampling.max_tokens=32", "retries.delay_s=0"]
    load = engines.load_engine
    engines.release_engines()  # a crashed engine is released: each load wraps a fresh real one
    monkeypatch.setattr(engines, "load_engine", lambda model_cfg, seed=0: _CrashOnce(load(model_cfg, seed)))
    _Crashing.calls = 0
    doc = json.loads((Path(generate_flow(config, settings)) / "run.json").read_text())
    assert _Crashing.calls == 4  # shards 0, 1 (crashed), 1 again, 2
    assert doc["status"] == "complete" and sorted(doc["shards"], key=int) == ["0", "1", "2"]
    assert doc["last_invocation"]["shards_generated"] == [0, 1, 2]
    assert sum(s["problems"] for s in doc["shards"].values()) == 12
    engines.release_engines()
