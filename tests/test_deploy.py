"""prefect.yaml on a real local Prefect server: deploy every declared deployment, run the generate
deployment through a process worker, and run a flow served by `expo-data serve`."""

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


def _wait_for_run(env, flow_run_id, timeout=300):
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = httpx.get(f"{env['PREFECT_API_URL']}/flow_runs/{flow_run_id}", timeout=5).json()
        state = (run.get("state") or {}).get("type")
        if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(2)
    pytest.fail(f"flow run {flow_run_id} did not finish in {timeout}s")


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


def test_expo_data_serve_runs_the_flow_on_demand_and_on_its_schedule(server, tmp_path):
    import httpx

    out = tmp_path / "served"
    serve = subprocess.Popen(
        [
            str(BIN / "expo-data"),
            "serve",
            str(ROOT / "data" / "quickstart.yaml"),
            "--cron",
            "0 3 * * *",
            "--name",
            "served",
            *[a for s in [f"output_dir={out}", *SMALL] for a in ("--set", s)],
        ],
        env=server,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        deployment = None
        while deployment is None and time.monotonic() < deadline:
            r = httpx.get(f"{server['PREFECT_API_URL']}/deployments/name/expo-generate/served", timeout=5)
            deployment = r.json() if r.status_code == 200 else None
            time.sleep(2)
        assert deployment is not None, "expo-data serve did not register its deployment"
        schedules = deployment["schedules"]
        assert len(schedules) == 1 and schedules[0]["schedule"]["cron"] == "0 3 * * *"
        assert deployment["parameters"]["overrides"][0] == f"output_dir={out}"
        run_id = _run_id(_prefect(server, "deployment", "run", "expo-generate/served"))
        run = _wait_for_run(server, run_id)
        assert run["state"]["type"] == "COMPLETED"
        assert json.loads((out / "run.json").read_text())["status"] == "complete"
    finally:
        os.killpg(serve.pid, signal.SIGINT)
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
