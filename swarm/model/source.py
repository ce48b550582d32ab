"""Finding a model's files: a local HF-format directory or an entry of the local Hugging Face cache."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarm.errors import SwarmError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
SAFETENSORS_INDEX = "model.safetensors.index.json"
# A diffusers pipeline's directory: this file at the top, one folder per component.
DIFFUSERS_INDEX = "model_index.json"


@dataclass(frozen=True)
class ModelSource:
    directory: Path
    config: dict[str, Any]
    weight_files: tuple[Path, ...]
    # Small files that travel in the meta chunk: config, tokenizer, generation config, license (in a diffusers
    # pipeline's component folders too; the meta chunk keeps their paths relative to `directory`).
    meta_files: tuple[Path, ...]
    # A diffusers pipeline's components that hold weights (their folders' names); empty for a transformers model.
    components: tuple[str, ...] = ()


def locate_model(reference: str) -> Path:
    """A directory path, or a hub id resolved offline through the local Hugging Face cache."""
    path = Path(reference).expanduser()
    if path.exists():
        if not path.is_dir():
            raise SwarmError(f"{reference} is a file; give the model's directory")
        return path
    if reference.count("/") == 1 and not reference.startswith((".", "/", "~")):
        cached = _from_hf_cache(reference)
        if cached is not None:
            return cached
    raise SwarmError(
        f"no model directory at '{reference}' and no '{reference}' in the local Hugging Face cache "
        "(HF_HUB_CACHE); give the path of a directory with config.json and safetensors weights"
    )


def _from_hf_cache(repo_id: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # any failure here only means "not in the cache"
        return None


def read_source(directory: Path) -> ModelSource:
    """Check a model directory and list its weight and meta files; clear errors for what is missing."""
    if not (directory / "config.json").is_file() and (directory / DIFFUSERS_INDEX).is_file():
        return _read_diffusers(directory)
    config = _json_object(directory / "config.json", "not a Hugging Face model directory")
    weights = _safetensors_files(directory)
    if not weights:
        legacy = sorted(p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
        if legacy:
            raise SwarmError(
                f"{directory} has only PyTorch pickle weights ({', '.join(legacy[:3])}); swarm reads "
                'safetensors only. Convert once with: python -c "from transformers import AutoModel; '
                f"AutoModel.from_pretrained('{directory}').save_pretrained('{directory}-safetensors')\""
            )
        raise SwarmError(f"{directory} has no weights (*.safetensors)")
    return ModelSource(directory=directory, config=config, weight_files=weights, meta_files=_meta_files(directory))


def _json_object(path: Path, missing: str) -> dict[str, Any]:
    if not path.is_file():
        raise SwarmError(f"{path.parent} has no {path.name}: {missing}")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise SwarmError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(config, dict):
        raise SwarmError(f"{path} does not hold a JSON object")
    return config


def _meta_files(directory: Path) -> tuple[Path, ...]:
    return tuple(
        sorted(
            path
            for path in directory.iterdir()
            if path.is_file()
            and not path.name.startswith(".")
            and path.suffix not in WEIGHT_SUFFIXES
            and not path.name.endswith(".safetensors.index.json")
        )
    )


def _read_diffusers(directory: Path) -> ModelSource:
    """A diffusers pipeline: model_index.json names its components, each a folder; those with safetensors weights
    (without a variant such as .fp16 in the name) are the components whose weights are published."""
    index = _json_object(directory / DIFFUSERS_INDEX, "not a diffusers pipeline")
    folders = sorted(name for name, value in index.items() if not name.startswith("_") and isinstance(value, list))
    components, weights, meta = [], [], list(_meta_files(directory))
    for name in folders:
        folder = directory / name
        if not folder.is_dir():
            continue
        meta.extend(_meta_files(folder))
        files = sorted(path for path in folder.glob("*.safetensors") if path.name.count(".") == 1)
        if files:
            components.append(name)
            weights.extend(files)
    if not components:
        raise SwarmError(f"{directory}: no component of the pipeline has safetensors weights")
    return ModelSource(directory, index, tuple(weights), tuple(meta), tuple(components))


def _safetensors_files(directory: Path) -> tuple[Path, ...]:
    index_path = directory / SAFETENSORS_INDEX
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise SwarmError(f"{index_path} is not a valid safetensors index: {error}") from error
        missing = [name for name in names if not (directory / name).is_file()]
        if missing:
            raise SwarmError(f"{index_path} names missing shards: {', '.join(missing)}")
        return tuple(directory / name for name in names)
    return tuple(sorted(directory.glob("*.safetensors")))
