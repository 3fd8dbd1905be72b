"""Shared fixtures: the demo model and datasets are built once per test session (and cached)."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
logging.getLogger().setLevel(logging.ERROR)  # open_clip warns about random init of the demo config

from common import default_data_root  # noqa: E402


@pytest.fixture(scope="session")
def data_root() -> str:
    return default_data_root()


@pytest.fixture(scope="session")
def demo(data_root):
    """The trained demo CLIP (trained on first use, then read from the cache)."""
    from models import load_model
    return load_model("demo", device="cpu", data_root=data_root)


@pytest.fixture(scope="session")
def digits(data_root):
    from datasets import build_dataset
    return build_dataset("Digits", data_root)


@pytest.fixture(scope="session")
def shapes(data_root):
    from datasets import build_dataset
    return build_dataset("Shapes", data_root)
