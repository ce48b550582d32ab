"""A task model whose blocks run on the swarm. The client holds the model's embeddings and task head (its embed and
head chunks) and runs the task's transformers pipeline itself; where the model would run its blocks, their input
goes through a route of peers instead, and what the last peer returns goes on into the head. Pre- and
post-processing (tokenizing, pooling, labels, entity grouping, zero-shot pairs) are transformers' own, so the
answers are the ones a local pipeline gives."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights

from swarm.client.local_parts import client_dtype, load_meta
from swarm.errors import SwarmError
from swarm.manifest import Manifest
from swarm.model.span import blocks_path, load_into, load_tensors, to_config
from swarm.tasks import media
from swarm.tasks.catalog import task_named
from swarm.tasks.runner import TaskOutput, pipeline_output

# Hidden states entering the first block (batch, tokens, hidden) and the padding mask (batch, tokens), or None when
# every token counts → the last block's output.
BlocksRunner = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]
# The transformers auto class of each task that splits (swarm.tasks.catalog.TaskSpec.splits), as its pipeline
# loads the model.
_AUTO_CLASSES = {
    "text-classification": "AutoModelForSequenceClassification",
    "zero-shot-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "feature-extraction": "AutoModel",
}


class RemoteBlocks(torch.nn.Module):
    """Stands in for every block of a model: the model's loop over its blocks calls this once. The padding mask
    comes from the base model's own arguments (the blocks get it reshaped for attention)."""

    def __init__(self, run: BlocksRunner) -> None:
        super().__init__()
        self.run = run
        self._local = threading.local()

    def remember_mask(self, _module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        self._local.mask = kwargs.get("attention_mask")

    def forward(self, hidden_states: torch.Tensor, *_args: Any, **_kwargs: Any) -> torch.Tensor:
        output = self.run(hidden_states, getattr(self._local, "mask", None))
        return output.to(hidden_states.dtype)


class ShardedTask:
    """One split task model at the client: its pipeline, with the blocks run by `run`."""

    def __init__(self, manifest: Manifest, chunk_paths: Mapping[str, Path], run: BlocksRunner) -> None:
        self.spec = task_named(manifest.task or "")
        if manifest.family is None or not self.spec.splits:
            raise SwarmError(f"{manifest.name} ({self.spec.name}) is not published in block chunks")
        self.name = manifest.name
        if "meta" not in chunk_paths:
            raise SwarmError(f"{manifest.name}: the meta chunk (config and tokenizer) is not available")
        self.tokenizer, _ = load_meta(chunk_paths["meta"], manifest.name)
        dtype = client_dtype(manifest.dtype)
        self.model = _without_blocks(manifest, [path for chunk, path in chunk_paths.items() if chunk != "meta"], dtype)
        remote = RemoteBlocks(run)
        _replace_blocks(self.model, blocks_path(self.model, manifest.family), remote)
        self.model.base_model.register_forward_pre_hook(remote.remember_mask, with_kwargs=True)
        # A pipeline per thread, each with its own copy of the tokenizer (tokenizers are not safe to share between
        # threads; the model is, for inference), so concurrent requests run their blocks at once.
        self._local = threading.local()

    def _pipeline(self) -> Any:
        made = getattr(self._local, "pipeline", None)
        if made is None:
            from transformers import pipeline

            tokenizer = copy.deepcopy(self.tokenizer)
            made = pipeline(self.spec.name, model=self.model, tokenizer=tokenizer)  # type: ignore[call-overload]
            self._local.pipeline = made
        return made

    @torch.no_grad()
    def run(self, data: bytes, params: dict[str, Any]) -> TaskOutput:
        """The task on `data` (UTF-8 text) with checked `params`."""
        value = media.decode_input(data, self.spec.input, self.spec.name)
        return pipeline_output(self._pipeline(), self.spec.name, value, params)


def _without_blocks(manifest: Manifest, tensor_files: list[Path], dtype: torch.dtype) -> Any:
    """The task model of `manifest` with everything but its blocks loaded from `tensor_files` (embed and head
    chunks); the blocks stay on the meta device, taking no memory."""
    import transformers

    auto_class = getattr(transformers, _AUTO_CLASSES[task_named(manifest.task or "").name])
    with init_empty_weights():
        model = auto_class.from_config(to_config(manifest.config), dtype=dtype)
    family = manifest.family or ""
    blocks = f"{blocks_path(model, family)}."
    load_into(
        model, load_tensors(tensor_files), lambda target: not target.startswith(blocks), torch.device("cpu"), dtype
    )
    missing = [name for name, value in model.named_parameters() if value.is_meta and not name.startswith(blocks)]
    if missing:
        raise SwarmError(f"{manifest.name}: the embed and head chunks lack {', '.join(missing[:5])}")
    return model.eval()


def _replace_blocks(model: Any, path: str, remote: RemoteBlocks) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, torch.nn.ModuleList([remote]))
