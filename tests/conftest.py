"""Shared fixtures: tiny random models (two seeds, same tokenizer) built once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# tests/ is on sys.path (pytest's default "prepend" import mode): its helper modules import by name.
from tiny import save_tiny  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny Qwen2 model + ChatML tokenizer (the teacher in reward tests)."""
    return save_tiny(tmp_path_factory.mktemp("tiny-teacher"), seed=0)


@pytest.fixture(scope="session")
def tiny_student_dir(tmp_path_factory) -> Path:
    """A second tiny model with other weights and the same tokenizer (the reward student)."""
    return save_tiny(tmp_path_factory.mktemp("tiny-student"), seed=1)


@pytest.fixture(scope="module")
def reward_models(tiny_model_dir, tiny_student_dir):
    """(teacher, reward student, tokenizer) loaded in eval mode, fresh for each test module."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    teacher = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    student = AutoModelForCausalLM.from_pretrained(tiny_student_dir).eval()
    return teacher, student, AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def qwen_tokenizer():
    """Qwen2.5-Instruct's real tokenizer (tests/qwen_tokenizer.py), for BPE merges the tiny tokenizer cannot show."""
    from qwen_tokenizer import build_qwen_tokenizer, ranks_file

    path = ranks_file()
    if path is None:
        pytest.skip("Qwen's BPE ranks are missing: `pip install --no-deps dashscope==2.0.2` (scripts/test.sh does)")
    return build_qwen_tokenizer(path)


@pytest.fixture(scope="session")
def qwen_tokenizer_dir(qwen_tokenizer, tmp_path_factory) -> Path:
    """The Qwen tokenizer saved to a folder (to pair with a tiny Qwen2 model from tests/tiny.py)."""
    folder = tmp_path_factory.mktemp("qwen-tokenizer")
    qwen_tokenizer.save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------- loopback Hub


@pytest.fixture
def hub_server(tmp_path):
    """A loopback Hub (tests/hubserver/) on 127.0.0.1 for one test; fails the test on a server bug."""
    from hubserver import HubServer

    server = HubServer(tmp_path / "loopback-hub").start()
    yield server
    server.stop()
    assert not server.crashes, "the loopback Hub crashed:\n" + "\n".join(server.crashes)


@pytest.fixture
def hub_env(hub_server, monkeypatch, tmp_path):
    """Point the unmodified huggingface_hub and datasets clients at `hub_server`, online, with its token.

    Both libraries read HF_ENDPOINT, HF_HUB_OFFLINE and their caches into module constants at import,
    so the environment (for subprocesses) and those constants (for this process) are set together;
    caches live in the test's temporary folder.
    """
    import datasets.config
    import huggingface_hub.constants as hub_constants
    from huggingface_hub import hf_api

    endpoint, home = hub_server.endpoint, tmp_path / "hf-home"
    for name, value in {
        "HF_ENDPOINT": endpoint,
        "HF_TOKEN": hub_server.token,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_DATASETS_CACHE": str(home / "datasets"),
        "HF_UPDATE_DOWNLOAD_COUNTS": "0",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for name, value in {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
    }.items():
        monkeypatch.setattr(hub_constants, name, value)
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)
    for name, value in {
        "HF_ENDPOINT": endpoint,
        "HUB_DATASETS_URL": endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}",
        "HF_HUB_OFFLINE": False,
        "HF_UPDATE_DOWNLOAD_COUNTS": False,
        "HF_DATASETS_CACHE": home / "datasets",
        "DOWNLOADED_DATASETS_PATH": home / "datasets" / "downloads",
        "EXTRACTED_DATASETS_PATH": home / "datasets" / "downloads" / "extracted",
        "HF_MODULES_CACHE": home / "modules",
    }.items():
        monkeypatch.setattr(datasets.config, name, value)
    return hub_server


@pytest.fixture
def store(hub_env):
    """The Hub store against the loopback Hub (tests/publishing.py's recipe), with short backoff so fault tests stay fast."""
    from publishing import make_recipe

    from factory.hub.hub_store import HubStore

    logs: list[str] = []
    hub = HubStore(make_recipe(), log=logs.append, backoff_s=0.01)
    hub.logs = logs
    return hub


@pytest.fixture(scope="module")
def torch_one_thread():
    """One intra-op torch thread for a test module: on a shared, busy CPU, tiny models run many
    times faster than with threads spin-waiting for each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """The generate tests' train and eval sets (tests/generating.py)."""
    from generating import write_data

    return write_data(tmp_path_factory.mktemp("gen-data"))


@pytest.fixture(scope="module")
def closing_teacher(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny teacher that closes some explanations and runs out of tokens on others (tests/generating.py)."""
    from generating import train_closing_teacher

    return train_closing_teacher(tiny_model_dir, tmp_path_factory.mktemp("closing-teacher"))


VLLM_STANDIN = Path(__file__).parent / "vllm_standin"


@pytest.fixture
def vllm_standin(monkeypatch):
    """Make the stand-in `vllm` importable for one test, and forget it afterwards.

    Without the clean-up, a later `import trl` would find the stand-in (no package metadata) and
    fail its vLLM version check.
    """
    monkeypatch.syspath_prepend(str(VLLM_STANDIN))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(VLLM_STANDIN), os.environ.get("PYTHONPATH", "")]))
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    yield VLLM_STANDIN
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        del sys.modules[name]
    import importlib

    importlib.invalidate_caches()
