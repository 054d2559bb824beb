"""Shared fixtures. Everything runs offline: the tiny model and problem files under data/."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# Before any import of prefect, vllm, transformers or datasets.
_PREFECT_HOME = tempfile.mkdtemp(prefix="expo-prefect-")
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
TINY = DATA / "tiny-model"
QUICKSTART = DATA / "quickstart.yaml"


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    assert (TINY / "model.safetensors").exists(), "data/tiny-model is missing: run `expo-data tiny-model build`"
    return TINY


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


@pytest.fixture(scope="session")
def hf_engine(tiny_model):
    from pipeline.config import ModelConfig
    from pipeline.engines import get_engine

    return get_engine(ModelConfig(path=str(tiny_model), engine="hf", max_model_len=1024), seed=0)


@pytest.fixture(scope="session")
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


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_PREFECT_HOME, ignore_errors=True)
