"""Shared fixtures: the project's model maker, isolated SWARM_HOME directories, the CLI."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
SWARM = str(Path(sys.executable).with_name("swarm"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_tool(name: str) -> ModuleType:
    """Import a script from tools/ (not a package) as a module."""
    path = ROOT / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"tools_{name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def make_model_tool() -> ModuleType:
    return load_tool("make_model")


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory, make_model_tool: ModuleType) -> dict[str, Path]:
    """One tiny generated model per supported family, made once per test session."""
    root = tmp_path_factory.mktemp("models")
    made = {}
    for family in ("llama", "mistral", "mixtral", "qwen2", "gpt2", "bert"):
        made[family] = Path(make_model_tool.make_model(family, root / family, layers=3, seed=1))
    return made


@pytest.fixture
def swarm_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a CLI subprocess with its own SWARM_HOME."""
    environment = dict(os.environ)
    environment["SWARM_HOME"] = str(tmp_path / "home")
    environment.pop("SWARM_CATALOG", None)
    environment.pop("SWARM_DATA", None)
    return environment
