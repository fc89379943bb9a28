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
sys.path.insert(0, str(Path(__file__).parent))

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


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT
