"""prefect.yaml on a real local Prefect server: deploy every declared deployment, run the generate
deployment through a process worker, and let the server's scheduler start runs, both of a
deployment served by a worker and of `expo-data serve --cron`. Registration is not enough: each
scheduling test waits for a run the scheduler made to reach COMPLETED."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SMALL = ["problems.limit=8", "model.engine=hf", "generation.sampling.max_tokens=64"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "EXPO_DATA_HOME": str(ROOT),
        # The scheduler and the pollers as they run in production, only looping faster, so that a
        # run scheduled a few seconds ahead is created and picked up within the test.
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
        "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "2",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
    }
    log = open(home / "server.log", "w")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    import httpx

    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            log.close()
            pytest.fail(f"prefect server did not start:\n{(home / 'server.log').read_text()[-3000:]}")
        time.sleep(1)
    env["SERVER_LOG"] = str(home / "server.log")
    yield env
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


def _prefect(env, *args, timeout=300):
    proc = subprocess.run(
        [str(BIN / "prefect"), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _api(method: str, url: str, **kw):
    """One request to the test server, or None when it did not answer in time: on 2 cores a server
    whose SQLite database is busy with a worker's flow run can stall a request for seconds, which a
    polling loop waits out until its own deadline."""
    import httpx

    try:
        return httpx.request(method, url, timeout=30, **kw)
    except httpx.TimeoutException:
        return None


def _wait_for_run(env, flow_run_id, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = _api("GET", f"{env['PREFECT_API_URL']}/flow_runs/{flow_run_id}")
        if r is None:
            continue
        run = r.json()
        state = (run.get("state") or {}).get("type")
        if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(2)
    pytest.fail(f"flow run {flow_run_id} did not finish in {timeout}s")


def _scheduler_errors(env) -> str:
    """The scheduler failing loop after loop, as SQLAlchemy 2.1 makes it under Prefect 3.7 ("Can't
    evaluate bulk DML statement": no run is ever created): the distinct exceptions it logged. A loop
    that met a locked SQLite database (a busy machine) is retried by the scheduler: not reported."""
    log = Path(env["SERVER_LOG"]).read_text(errors="replace")
    failed_loops = [line for line in log.splitlines() if "| ERROR" in line and "schedule_" in line]
    raised = {line for line in log.splitlines() if re.match(r"^[\w.]+(Error|Exception): ", line)}
    if len(failed_loops) < 3 or all("database is locked" in line for line in raised):
        return ""
    return f"{len(failed_loops)} failed scheduler loops:\n" + "\n".join(sorted(raised))


def _scheduled_run_completes(env, deployment: str, timeout: float = 420) -> dict:
    """The first run the scheduler made for ``deployment`` (auto_scheduled), once it has finished.
    Fails at once, with the server's log, if the scheduler is failing."""
    api = env["PREFECT_API_URL"]
    deadline = time.monotonic() + timeout
    dep = None
    while dep is None and time.monotonic() < deadline:
        r = _api("GET", f"{api}/deployments/name/{deployment}")
        dep = r.json() if r is not None else None
    runs = []
    while time.monotonic() < deadline:
        errors = _scheduler_errors(env)
        assert not errors, f"the Prefect scheduler is failing:\n{errors}"
        r = _api(
            "POST",
            f"{api}/flow_runs/filter",
            json={"deployments": {"id": {"any_": [dep["id"]]}}, "sort": "EXPECTED_START_TIME_ASC"},
        )
        if r is None:
            continue
        runs = r.json()
        made = [r for r in runs if r["auto_scheduled"]]
        if made and made[0]["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return made[0]
        time.sleep(2)
    pytest.fail(f"no scheduled run of {deployment} finished in {timeout}s (runs: {runs})")


def _run_id(output: str) -> str:
    return re.search(r"UUID: ([0-9a-f-]{36})", output).group(1)


def test_declared_deployments_deploy_and_generate_runs_on_a_worker(server, tmp_path):
    _prefect(server, "work-pool", "create", "expo-local", "--type", "process")
    _prefect(server, "--no-prompt", "deploy", "--all")
    listed = _prefect(server, "deployment", "ls")
    for name in ("expo-generate/generate", "expo-generate/nightly-genera", "expo-publish/publish", "expo-train/train"):
        assert name in listed
    out = tmp_path / "run"
    params = json.dumps({"overrides": [f"output_dir={out}", *SMALL]})
    run_id = _run_id(_prefect(server, "deployment", "run", "expo-generate/generate", "--params", params))
    worker = subprocess.run(
        [str(BIN / "prefect"), "worker", "start", "--pool", "expo-local", "--run-once"],
        env=server,
        cwd=tmp_path,  # the pull step, not the worker's cwd, puts the run in the checkout
        capture_output=True,
        text=True,
        timeout=600,
    )
    run = _wait_for_run(server, run_id)
    assert run["state"]["type"] == "COMPLETED", worker.stdout + worker.stderr
    doc = json.loads((out / "run.json").read_text())
    assert doc["status"] == "complete" and doc["problems"]["valid"] == 8
    assert doc["tables"]["grpo"]["rows"] == 8


def _background(env, cmd, cwd) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def _stop(proc: subprocess.Popen) -> str:
    os.killpg(proc.pid, signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    return out or ""


def _soon(seconds: int) -> str:
    from datetime import UTC, datetime, timedelta

    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def test_the_nightly_deployment_fires_on_its_schedule_and_completes_on_a_worker(server, tmp_path):
    """The shipped nightly-generate deployment, deployed from prefect.yaml with its schedule moved
    to a few seconds from now: the server's scheduler must create the run and a worker complete it."""
    _prefect(server, "work-pool", "create", "expo-local", "--type", "process", "--overwrite")
    out, release = tmp_path / "nightly", tmp_path / "release"
    publish = ["publish.repo=me/expo-nightly", f"publish.dry_run={release}"]  # staged, never pushed
    params = json.dumps({"overrides": [f"output_dir={out}", "model.path=data/tiny-model", *SMALL, *publish]})
    _prefect(
        server,
        "--no-prompt",
        "deploy",
        "--name",
        "nightly-generate",
        "--params",
        params,
        "--interval",
        "3600",
        "--anchor-date",
        _soon(20),
    )
    worker = _background(server, [str(BIN / "prefect"), "worker", "start", "--pool", "expo-local"], tmp_path)
    try:
        run = _scheduled_run_completes(server, "expo-generate/nightly-generate")
    finally:
        log = _stop(worker)
    assert run["state"]["type"] == "COMPLETED", log[-4000:]
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    assert "me/expo-nightly" in (release / "README.md").read_text()
    assert list((release / "dpo").glob("*.parquet"))


def test_expo_data_serve_runs_the_flow_on_its_cron_schedule(server, tmp_path):
    """`expo-data serve --cron`: registered with the cron and parameters given, and then the
    scheduler's run (the next minute) completes in the serving process."""

    out = tmp_path / "served"
    overrides = [f"output_dir={out}", *SMALL]
    cmd = [str(BIN / "expo-data"), "serve", str(ROOT / "data" / "quickstart.yaml"), "--cron", "* * * * *"]
    cmd += ["--name", "served", *[a for s in overrides for a in ("--set", s)]]
    serve = _background(server, cmd, tmp_path)
    try:
        deadline = time.monotonic() + 180
        deployment = None
        while deployment is None and time.monotonic() < deadline:
            r = _api("GET", f"{server['PREFECT_API_URL']}/deployments/name/expo-generate/served")
            deployment = r.json() if r is not None and r.status_code == 200 else None
            time.sleep(2)
        assert deployment is not None, "expo-data serve did not register its deployment"
        schedules = deployment["schedules"]
        assert len(schedules) == 1 and schedules[0]["schedule"]["cron"] == "* * * * *"
        assert deployment["parameters"]["overrides"] == overrides
        run = _scheduled_run_completes(server, "expo-generate/served")
    finally:
        log = _stop(serve)
    assert run["state"]["type"] == "COMPLETED", log[-4000:]
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
