"""The `task` message of the compute protocol, both ways (framing in swarm/wire.py).

Request: body {"task", "params", "media_type"}, one rank-1 uint8 tensor "input" (the file or UTF-8 text).
Result: body {"task", "file_type"}, a uint8 tensor "output" (UTF-8 JSON: the pipeline's output), "file" when the task
makes one (its media type in file_type), and float tensors the task returns exactly ("features", "depth").
Both sides check what they receive: it comes from the network.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from swarm.errors import SwarmError
from swarm.tasks.catalog import MAX_INPUT_BYTES, TaskSpec
from swarm.wire import Header, Kind

# The error code of a task request whose input or parameters do not fit the task (wrong media type, too large, an
# unknown parameter): the caller's fault, which another peer would find as well.
BAD_INPUT = "bad_input"
# Float tensors a task result may carry, by name.
RESULT_TENSORS = ("features", "depth")
# Largest JSON output a client reads (token labels of a long text stay far below it).
MAX_OUTPUT_JSON_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class TaskResult:
    """A task's answer as the client reads it, and which peer gave it in how many seconds."""

    task: str
    output: Any
    file: bytes | None = None
    file_type: str | None = None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    peer: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"task": self.task, "output": self.output, "peer": self.peer}
        record["seconds"] = round(self.seconds, 4)
        if self.file is not None:
            record.update(file_type=self.file_type, file_bytes=len(self.file))
        record.update({name: tensor.tolist() for name, tensor in self.tensors.items()})
        return record


def as_bytes_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)


def task_request(request_id: str, spec: TaskSpec, data: bytes, media_type: str, params: Mapping[str, Any]) -> tuple[
    Header, dict[str, torch.Tensor]
]:  # fmt: skip
    if len(data) > MAX_INPUT_BYTES:
        raise SwarmError(f"the input has {len(data)} bytes; {spec.name} takes at most {MAX_INPUT_BYTES}")
    body = {"task": spec.name, "params": dict(params), "media_type": media_type}
    return Header(kind=Kind.TASK, request_id=request_id, body=body), {"input": as_bytes_tensor(data)}


def request_input(body: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> tuple[str, bytes, Any]:
    """The task named, the input's bytes and the parameters of a received request (the task runner checks the
    bytes and parameters against the task)."""
    task = body.get("task")
    if not isinstance(task, str) or len(task) > 64:
        raise SwarmError("a task request's body needs the task's name")
    return task, _bytes(tensors, "input", MAX_INPUT_BYTES), body.get("params")


def result_message(
    task: str, output: Any, file: bytes | None, file_type: str | None, extra: Mapping[str, torch.Tensor]
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The body and tensors of a peer's task result."""
    tensors = {"output": as_bytes_tensor(json.dumps(output, allow_nan=False).encode())}
    if file is not None:
        tensors["file"] = as_bytes_tensor(file)
    tensors.update(extra)
    return {"task": task, "file_type": file_type}, tensors


def read_result(header: Header, tensors: Mapping[str, torch.Tensor], peer: str, seconds: float) -> TaskResult:
    """A received result, checked: JSON output, a file only with a media type, finite float tensors we know."""
    body = header.body
    try:
        output = json.loads(_bytes(tensors, "output", MAX_OUTPUT_JSON_BYTES).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise SwarmError(f"peer {peer} sent an output that is not JSON: {error}") from None
    file_type = body.get("file_type")
    file = _bytes(tensors, "file", 1 << 31) if "file" in tensors else None
    if file is not None and not (isinstance(file_type, str) and file_type.count("/") == 1 and len(file_type) < 64):
        raise SwarmError(f"peer {peer} sent a file without a media type")
    extra = {}
    for name in RESULT_TENSORS:
        if name in tensors:
            tensor = tensors[name]
            if not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
                raise SwarmError(f"peer {peer} sent a {name} tensor that is not finite floats")
            extra[name] = tensor.float()
    task = body.get("task") if isinstance(body.get("task"), str) else ""
    return TaskResult(str(task), output, file, file_type if file is not None else None, extra, peer, seconds)


def _bytes(tensors: Mapping[str, torch.Tensor], name: str, limit: int) -> bytes:
    tensor = tensors.get(name)
    if tensor is None or tensor.dtype != torch.uint8 or tensor.dim() != 1:
        raise SwarmError(f"the message needs a rank-1 uint8 tensor {name!r}")
    if tensor.numel() > limit:
        raise SwarmError(f"{name} has {tensor.numel()} bytes, more than {limit}")
    return tensor.numpy().tobytes()
