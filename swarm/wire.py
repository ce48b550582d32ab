"""Wire schema of the compute protocol: messages to ZeroMQ multipart frames and back.

A message is a list of frames (ZeroMQ routing frames are stripped by the caller):

    frame 0      UTF-8 JSON header (see `Header`), at most `MAX_HEADER_BYTES`
    frame 1..n   raw tensor bytes, one frame per `Header.tensors` descriptor, in order

Everything a peer receives is untrusted, so `decode` checks every field's type and range and
raises `WireError` with a stable machine-readable `code`; it never asserts, unpickles or evals.
This module is pure: it imports no socket library, so it is testable without a network.

Zero copy: `encode` hands out the tensors' own memory as memoryviews (send them with
``send_multipart(frames, copy=False)`` and do not modify the tensors until sent). `decode`
builds tensors over the received frames with `torch.frombuffer`; frames received with
``copy=False`` (zmq.Frame) and bytearrays are used in place. Read-only buffers (`bytes`) are
copied once, because torch tensors are always writable and an in-place op would otherwise
write into an immutable (possibly interned) bytes object.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import torch

from swarm.address import MAX_ADDRESS_CHARS, TCP_SCHEME, Address
from swarm.errors import SwarmError

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = [
    "DTYPES",
    "MAX_ADDRESS_CHARS",
    "MAX_BLOCK_INDEX",
    "MAX_DIM",
    "MAX_ERROR_MESSAGE_CHARS",
    "MAX_HEADER_BYTES",
    "MAX_ID_CHARS",
    "MAX_POSITION",
    "MAX_RANK",
    "MAX_ROUTE_HOPS",
    "MAX_STEP",
    "MAX_TENSORS",
    "MAX_TENSOR_BYTES",
    "MAX_TOTAL_BYTES",
    "PROTOCOL_VERSION",
    "UNKNOWN_REQUEST_ID",
    "ErrorCode",
    "Header",
    "Hop",
    "Kind",
    "TensorSpec",
    "WireError",
    "decode",
    "encode",
    "error_reply",
    "expect_tensor",
    "format_address",
    "parse_address",
]

PROTOCOL_VERSION = 1

# Caps. The byte caps are defaults of keyword arguments of encode/decode; the others are fixed.
MAX_HEADER_BYTES = 64 * 1024
MAX_TENSOR_BYTES = 512 * 1024 * 1024
MAX_TOTAL_BYTES = 512 * 1024 * 1024
MAX_TENSORS = 64
MAX_RANK = 4
MAX_DIM = 2**31 - 1
MAX_ROUTE_HOPS = 64
MAX_ID_CHARS = 64
MAX_BLOCK_INDEX = 100_000
MAX_STEP = 2**31 - 1
MAX_POSITION = 2**31 - 1
MAX_ERROR_MESSAGE_CHARS = 2048

# request_id of an error reply to a message whose own request_id could not be read.
UNKNOWN_REQUEST_ID = "-"


class Kind(StrEnum):
    """Message kinds."""

    HELLO = "hello"
    INFO = "info"
    OPEN_SESSION = "open_session"
    STEP = "step"
    CLOSE_SESSION = "close_session"
    RESULT = "result"
    ERROR = "error"
    PING = "ping"
    PONG = "pong"
    # A whole input (bytes frame "input") for a peer that runs a transformers task (swarm.tasks); its result
    # carries the output JSON (bytes frame "output") and perhaps a file (frame "file").
    TASK = "task"
    # A copy of the hidden states a hop received for a step (tensor "hidden"; body "blocks": the hop's [start, end)),
    # sent to reply_to when the step's body asks for it ("tee": true), so that a checking client (--verify) can
    # re-run one hop alone on its real input.
    TEE = "tee"


_KIND_VALUES = frozenset(kind.value for kind in Kind)


class ErrorCode(StrEnum):
    """Codes `WireError` uses for malformed messages (error replies may carry other codes)."""

    BAD_HEADER = "bad_header"  # header frame is not valid JSON / a field has a wrong type or range
    BAD_VERSION = "bad_version"  # protocol version this peer does not speak
    BAD_KIND = "bad_kind"  # unknown message kind
    BAD_ROUTE = "bad_route"  # a route hop or reply_to address is malformed
    BAD_TENSOR = "bad_tensor"  # tensor descriptor or tensor data is malformed
    BAD_FRAMES = "bad_frames"  # wrong number of frames, or a frame is not a buffer
    TOO_LARGE = "too_large"  # header, a tensor or all tensors exceed a size cap


class WireError(SwarmError):
    """A message failed validation. `code` is stable and machine-readable; `message` is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = str(code)
        self.message = message


# Wire dtype names; bfloat16 has no numpy equivalent, which is why decoding goes through torch.
DTYPES: Mapping[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "bool": torch.bool,
    # Raw bytes: a task's files and JSON travel as rank-1 uint8 frames.
    "uint8": torch.uint8,
}
_DTYPE_NAMES: Mapping[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}

# Identifiers end up in logs: printable ASCII without spaces keeps log lines unambiguous.
_TOKEN_RE = re.compile(rf"[\x21-\x7e]{{1,{MAX_ID_CHARS}}}")
_ERROR_CODE_RE = re.compile(r"[a-z0-9_]{1,64}")


@dataclass(frozen=True)
class Hop:
    """One peer on the route: its ROUTER address and the blocks [start, end) it runs."""

    address: str
    blocks: tuple[int, int]


@dataclass(frozen=True)
class TensorSpec:
    """Descriptor of one tensor frame."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class Header:
    """Frame 0 of every message.

    `route` holds the hops still to run; `reply_to` is where the last hop sends the result.
    `tensors` is filled in by `encode` from the tensors it is given (whatever the caller put
    there is replaced) and by `decode` from the wire. `body` holds small kind-specific fields
    (info: model, blocks, dtype, throughput; error: code and message; sampling parameters).
    """

    kind: Kind
    request_id: str
    session_id: str | None = None
    step: int = 0
    route: tuple[Hop, ...] = ()
    reply_to: str | None = None
    positions: tuple[int, int] | None = None
    tensors: tuple[TensorSpec, ...] = ()
    body: dict[str, Any] = field(default_factory=dict)
    version: int = PROTOCOL_VERSION

    def to_json_obj(self) -> dict[str, Any]:
        """The header as the JSON object sent on the wire (not validated; `encode` validates)."""
        # Optional fields are left out rather than sent as null, to keep headers small.
        obj: dict[str, Any] = {"v": self.version, "kind": self.kind, "request_id": self.request_id}
        if self.session_id is not None:
            obj["session_id"] = self.session_id
        obj["step"] = self.step
        obj["route"] = [{"address": hop.address, "blocks": list(hop.blocks)} for hop in self.route]
        if self.reply_to is not None:
            obj["reply_to"] = self.reply_to
        if self.positions is not None:
            obj["positions"] = list(self.positions)
        obj["tensors"] = [
            {"name": spec.name, "dtype": spec.dtype, "shape": list(spec.shape), "nbytes": spec.nbytes}
            for spec in self.tensors
        ]
        obj["body"] = self.body
        return obj


# ---------------------------------------------------------------------------------------------
# Addresses


def parse_address(address: object, what: str = "address") -> Address:
    """A route hop or reply_to address: "tcp://host:port" with a port in 1..65535 (swarm.address parses it)."""
    if not isinstance(address, str):
        raise WireError(ErrorCode.BAD_ROUTE, f"{what} must be a string, got {_type_name(address)}")
    if len(address) > MAX_ADDRESS_CHARS:
        raise WireError(ErrorCode.BAD_ROUTE, f"{what} is longer than {MAX_ADDRESS_CHARS} characters")
    try:
        parsed = Address.parse(address, what) if address.startswith(TCP_SCHEME) else None
    except SwarmError:
        parsed = None
    if parsed is None or parsed.host == "*":
        raise WireError(ErrorCode.BAD_ROUTE, f"{what} {address[:80]!r} is not of the form tcp://host:port")
    if not 1 <= parsed.port <= 65535:
        raise WireError(ErrorCode.BAD_ROUTE, f"{what} {address!r} has port {parsed.port} outside 1..65535")
    return parsed


def format_address(host: str, port: int) -> str:
    """The wire spelling of host and port (a bare IPv6 host gets brackets), checked like a received one."""
    address = Address(host.strip("[]"), port).tcp
    parse_address(address)
    return address


# ---------------------------------------------------------------------------------------------
# Field validation: each helper checks one JSON value and returns it typed.


def _type_name(value: object) -> str:
    return type(value).__name__


def _int(value: object, what: str, low: int, high: int, code: str = ErrorCode.BAD_HEADER) -> int:
    # bool is a subclass of int in Python; a JSON true is not a number.
    if not isinstance(value, int) or isinstance(value, bool):
        raise WireError(code, f"{what} must be an integer, got {_type_name(value)}")
    if not low <= value <= high:
        raise WireError(code, f"{what} = {value} is outside {low}..{high}")
    return value


def _token(value: object, what: str, code: str = ErrorCode.BAD_HEADER) -> str:
    if not isinstance(value, str):
        raise WireError(code, f"{what} must be a string, got {_type_name(value)}")
    if _TOKEN_RE.fullmatch(value) is None:
        raise WireError(code, f"{what} must be 1..{MAX_ID_CHARS} printable ASCII characters without spaces")
    return value


def _list(value: object, what: str, max_len: int, code: str = ErrorCode.BAD_HEADER) -> list[Any]:
    if not isinstance(value, list):
        raise WireError(code, f"{what} must be a list, got {_type_name(value)}")
    if len(value) > max_len:
        raise WireError(code, f"{what} has {len(value)} entries, more than {max_len}")
    return value


def _object(value: object, what: str, code: str = ErrorCode.BAD_HEADER) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise WireError(code, f"{what} must be an object, got {_type_name(value)}")
    return value


def _range(value: object, what: str, high: int, code: str = ErrorCode.BAD_HEADER) -> tuple[int, int]:
    """A half-open range [start, end) with 0 <= start < end <= high."""
    pair = _list(value, what, 2, code)
    if len(pair) != 2:
        raise WireError(code, f"{what} must be [start, end]")
    start = _int(pair[0], f"{what} start", 0, high, code)
    end = _int(pair[1], f"{what} end", 0, high, code)
    if end <= start:
        raise WireError(code, f"{what} [{start}, {end}) is empty or reversed")
    return start, end


def _hop(value: object, index: int) -> Hop:
    what = f"route[{index}]"
    obj = _object(value, what, ErrorCode.BAD_ROUTE)
    if "address" not in obj or "blocks" not in obj:
        raise WireError(ErrorCode.BAD_ROUTE, f"{what} needs address and blocks")
    parse_address(obj["address"], f"{what}.address")
    blocks = _range(obj["blocks"], f"{what}.blocks", MAX_BLOCK_INDEX, ErrorCode.BAD_ROUTE)
    return Hop(address=obj["address"], blocks=blocks)


def _tensor_spec(value: object, index: int, max_tensor_bytes: int) -> TensorSpec:
    what = f"tensors[{index}]"
    code = ErrorCode.BAD_TENSOR
    obj = _object(value, what, code)
    for key in ("name", "dtype", "shape", "nbytes"):
        if key not in obj:
            raise WireError(code, f"{what} has no {key}")
    name = _token(obj["name"], f"{what}.name", code)
    dtype_name = obj["dtype"]
    if not isinstance(dtype_name, str) or dtype_name not in DTYPES:
        raise WireError(code, f"{what}.dtype must be one of {', '.join(DTYPES)}, got {dtype_name!r:.40}")
    shape = tuple(
        _int(dim, f"{what}.shape[{axis}]", 0, MAX_DIM, code)
        for axis, dim in enumerate(_list(obj["shape"], f"{what}.shape", MAX_RANK, code))
    )
    nbytes = _int(obj["nbytes"], f"{what}.nbytes", 0, 2**63 - 1, code)
    # Python ints do not overflow, so a huge declared shape is caught here, before any allocation.
    expected = math.prod(shape) * DTYPES[dtype_name].itemsize
    if max(expected, nbytes) > max_tensor_bytes:
        raise WireError(
            ErrorCode.TOO_LARGE,
            f"{what} {name!r} declares {max(expected, nbytes)} bytes, cap {max_tensor_bytes}",
        )
    if nbytes != expected:
        raise WireError(code, f"{what} {name!r} has nbytes {nbytes}, shape {list(shape)} needs {expected}")
    return TensorSpec(name=name, dtype=dtype_name, shape=shape, nbytes=nbytes)


def _check_body(kind: Kind, body: dict[str, Any]) -> None:
    if kind is Kind.ERROR:
        code = body.get("code")
        if not isinstance(code, str) or _ERROR_CODE_RE.fullmatch(code) is None:
            raise WireError(ErrorCode.BAD_HEADER, "error body.code must be a lowercase identifier")
        message = body.get("message")
        if not isinstance(message, str) or len(message) > MAX_ERROR_MESSAGE_CHARS:
            raise WireError(
                ErrorCode.BAD_HEADER,
                f"error body.message must be a string of <= {MAX_ERROR_MESSAGE_CHARS} chars",
            )


def _header_from_obj(obj: object, max_tensor_bytes: int, max_total_bytes: int) -> Header:
    """Validate a parsed header object; unknown keys are ignored for forward compatibility."""
    header = _object(obj, "header")
    if "v" not in header:
        raise WireError(ErrorCode.BAD_HEADER, "header has no protocol version 'v'")
    version = header["v"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise WireError(ErrorCode.BAD_HEADER, f"v must be an integer, got {_type_name(version)}")
    # Checked before anything else: another version may lay the rest of the header out differently.
    if version != PROTOCOL_VERSION:
        raise WireError(ErrorCode.BAD_VERSION, f"protocol version {version} (this peer speaks {PROTOCOL_VERSION})")

    kind_value = header.get("kind")
    if not isinstance(kind_value, str) or kind_value not in _KIND_VALUES:
        raise WireError(ErrorCode.BAD_KIND, f"unknown message kind {kind_value!r:.40}")
    kind = Kind(kind_value)

    if "request_id" not in header:
        raise WireError(ErrorCode.BAD_HEADER, "header has no request_id")
    request_id = _token(header["request_id"], "request_id")
    session_value = header.get("session_id")
    session_id = None if session_value is None else _token(session_value, "session_id")
    step = _int(header.get("step", 0), "step", 0, MAX_STEP)

    hops = _list(header.get("route", []), "route", MAX_ROUTE_HOPS, ErrorCode.BAD_ROUTE)
    route = tuple(_hop(hop, index) for index, hop in enumerate(hops))
    if len({hop.address for hop in route}) != len(route):
        # A peer runs its blocks for a message once: a route that loops through it multiplies its work.
        raise WireError(ErrorCode.BAD_ROUTE, "route names a peer more than once")
    reply_value = header.get("reply_to")
    if reply_value is not None:
        parse_address(reply_value, "reply_to")
    positions_value = header.get("positions")
    positions = None if positions_value is None else _range(positions_value, "positions", MAX_POSITION)

    specs_value = _list(header.get("tensors", []), "tensors", MAX_TENSORS, ErrorCode.BAD_TENSOR)
    tensors = tuple(_tensor_spec(spec, index, max_tensor_bytes) for index, spec in enumerate(specs_value))
    if len({spec.name for spec in tensors}) != len(tensors):
        raise WireError(ErrorCode.BAD_TENSOR, "tensor names are not unique")
    total = sum(spec.nbytes for spec in tensors)
    if total > max_total_bytes:
        raise WireError(ErrorCode.TOO_LARGE, f"tensors total {total} bytes, cap {max_total_bytes}")

    body = _object(header.get("body", {}), "body")
    _check_body(kind, body)
    return Header(
        kind=kind,
        request_id=request_id,
        session_id=session_id,
        step=step,
        route=route,
        reply_to=reply_value,
        positions=positions,
        tensors=tensors,
        body=body,
        version=version,
    )


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; Python's json accepts them unless told otherwise.
    raise ValueError(f"{name} is not valid JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Duplicate keys would let two parsers disagree on what a header says.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key in JSON object")
    return obj


# ---------------------------------------------------------------------------------------------
# Tensor frames


def _tensor_frame(name: str, tensor: object) -> tuple[TensorSpec, memoryview]:
    """The descriptor and the raw bytes of one tensor, sharing its memory where possible."""
    if not isinstance(tensor, torch.Tensor):
        raise WireError(ErrorCode.BAD_TENSOR, f"tensor {name!r} is a {_type_name(tensor)}, not a torch.Tensor")
    dtype_name = _DTYPE_NAMES.get(tensor.dtype)
    if dtype_name is None:
        raise WireError(ErrorCode.BAD_TENSOR, f"tensor {name!r} has dtype {tensor.dtype}, not sendable")
    if tensor.layout != torch.strided or tensor.device.type == "meta":
        raise WireError(ErrorCode.BAD_TENSOR, f"tensor {name!r} is not a dense tensor with data")
    if tensor.dim() > MAX_RANK:
        raise WireError(ErrorCode.BAD_TENSOR, f"tensor {name!r} has rank {tensor.dim()} > {MAX_RANK}")
    data = tensor.detach()
    if data.device.type != "cpu":
        data = data.cpu()
    # Only a non-contiguous tensor is copied; a contiguous one is reinterpreted as bytes in place.
    data = data.contiguous().reshape(-1).view(torch.uint8)
    # numpy exposes the buffer protocol that torch lacks; the array keeps the tensor alive.
    buffer = memoryview(data.numpy())  # type: ignore[arg-type]  # numpy stubs: __buffer__ only on 3.12+
    spec = TensorSpec(name=name, dtype=dtype_name, shape=tuple(tensor.shape), nbytes=buffer.nbytes)
    return spec, buffer


def _as_bytes_view(frame: object, index: int) -> memoryview:
    try:
        view = memoryview(frame)  # type: ignore[arg-type]
    except TypeError:
        raise WireError(ErrorCode.BAD_FRAMES, f"frame {index} is a {_type_name(frame)}, not a buffer") from None
    try:
        if not view.c_contiguous:
            view = memoryview(bytearray(view.tobytes()))
        if view.ndim != 1 or view.format != "B":
            view = view.cast("B")
    except (TypeError, ValueError):
        raise WireError(ErrorCode.BAD_FRAMES, f"frame {index} is not a plain byte buffer") from None
    return view


def _frame_tensor(view: memoryview, spec: TensorSpec) -> torch.Tensor:
    dtype = DTYPES[spec.dtype]
    if spec.nbytes == 0:
        # torch.frombuffer rejects empty buffers.
        return torch.empty(spec.shape, dtype=dtype)
    if view.readonly:
        view = memoryview(bytearray(view))
    raw = torch.frombuffer(view, dtype=torch.uint8)
    if raw.data_ptr() % dtype.itemsize:
        # A misaligned slice of a larger buffer: copy so typed loads are aligned.
        raw = raw.clone()
    if dtype == torch.bool and bool((raw > 1).any()):
        # A bool byte other than 0/1 is undefined behaviour in torch's kernels.
        raise WireError(ErrorCode.BAD_TENSOR, f"bool tensor {spec.name!r} holds bytes other than 0 and 1")
    return raw.view(dtype).view(spec.shape)


# ---------------------------------------------------------------------------------------------
# Public API


def encode(
    header: Header,
    tensors: Mapping[str, torch.Tensor] | None = None,
    *,
    max_header_bytes: int = MAX_HEADER_BYTES,
    max_tensor_bytes: int = MAX_TENSOR_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    validate: bool = True,
) -> list[bytes | memoryview]:
    """Frames for `header` and `tensors` (in mapping order), validated as `decode` would.

    `header.tensors` is replaced by descriptors of `tensors`. Tensor frames share the tensors'
    memory when they are contiguous CPU tensors: keep them unchanged until the frames are sent.
    `validate=False` is for a header that `decode` already validated and that was changed only by the
    caller's own code (a peer forwarding a step): it skips the field checks, a tenth of a millisecond on every
    hop, and keeps the size caps.
    """
    tensors = tensors or {}
    if len(tensors) > MAX_TENSORS:
        raise WireError(ErrorCode.BAD_TENSOR, f"{len(tensors)} tensors, more than {MAX_TENSORS}")
    specs: list[TensorSpec] = []
    buffers: list[memoryview] = []
    for name, tensor in tensors.items():
        spec, buffer = _tensor_frame(name, tensor)
        specs.append(spec)
        buffers.append(buffer)
    header = replace(header, tensors=tuple(specs))
    obj = header.to_json_obj()
    if validate:
        _header_from_obj(obj, max_tensor_bytes, max_total_bytes)
    else:
        total = sum(spec.nbytes for spec in specs)
        if max((spec.nbytes for spec in specs), default=0) > max_tensor_bytes or total > max_total_bytes:
            raise WireError(ErrorCode.TOO_LARGE, f"tensors total {total} bytes, over the caps")
    try:
        raw = json.dumps(obj, allow_nan=False, separators=(",", ":")).encode("ascii")
    except (TypeError, ValueError) as exc:
        raise WireError(ErrorCode.BAD_HEADER, f"header is not JSON-serialisable: {exc}") from None
    if len(raw) > max_header_bytes:
        raise WireError(ErrorCode.TOO_LARGE, f"header is {len(raw)} bytes, cap {max_header_bytes}")
    return [raw, *buffers]


def decode(
    frames: Sequence[Buffer],
    *,
    max_header_bytes: int = MAX_HEADER_BYTES,
    max_tensor_bytes: int = MAX_TENSOR_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> tuple[Header, dict[str, torch.Tensor]]:
    """Parse and validate frames (bytes, bytearray, memoryview, zmq.Frame, ...).

    Returns the header and the tensors by name, in descriptor order. Raises only `WireError`.
    """
    if not isinstance(frames, Sequence) or isinstance(frames, (bytes, bytearray, memoryview, str)):
        raise WireError(ErrorCode.BAD_FRAMES, "frames must be a list of buffers")
    if not frames:
        raise WireError(ErrorCode.BAD_FRAMES, "message has no frames")
    if len(frames) > 1 + MAX_TENSORS:
        raise WireError(ErrorCode.BAD_FRAMES, f"message has {len(frames)} frames, more than {1 + MAX_TENSORS}")
    header_view = _as_bytes_view(frames[0], 0)
    if header_view.nbytes > max_header_bytes:
        raise WireError(ErrorCode.TOO_LARGE, f"header is {header_view.nbytes} bytes, cap {max_header_bytes}")
    try:
        obj = json.loads(
            bytes(header_view).decode("utf-8"),
            parse_constant=_reject_constant,
            object_pairs_hook=_unique_keys,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and over-long integer literals.
        raise WireError(ErrorCode.BAD_HEADER, f"header is not UTF-8 JSON: {str(exc)[:200]}") from None
    header = _header_from_obj(obj, max_tensor_bytes, max_total_bytes)

    if len(frames) != 1 + len(header.tensors):
        raise WireError(
            ErrorCode.BAD_FRAMES,
            f"header describes {len(header.tensors)} tensors but {len(frames) - 1} frames came",
        )
    tensors: dict[str, torch.Tensor] = {}
    for index, spec in enumerate(header.tensors, start=1):
        view = _as_bytes_view(frames[index], index)
        if view.nbytes != spec.nbytes:
            raise WireError(
                ErrorCode.BAD_TENSOR,
                f"tensor {spec.name!r} frame has {view.nbytes} bytes, header says {spec.nbytes}",
            )
        tensors[spec.name] = _frame_tensor(view, spec)
    return header, tensors


def error_reply(request: Header | None, code: str, message: str, peer: str | None = None) -> list[bytes | memoryview]:
    """Frames of an error reply to `request` (None when the request could not be parsed).

    `peer` names the peer that failed, so a client hearing the error from the end of a route knows which hop.
    """
    code_text = str(code)
    if _ERROR_CODE_RE.fullmatch(code_text) is None:
        raise ValueError(f"error code {code_text!r} is not a lowercase identifier")
    body = {"code": code_text, "message": message[:MAX_ERROR_MESSAGE_CHARS]}
    if peer is not None:
        body["peer"] = peer
    if request is None:
        header = Header(kind=Kind.ERROR, request_id=UNKNOWN_REQUEST_ID, body=body)
    else:
        header = Header(
            kind=Kind.ERROR,
            request_id=request.request_id,
            session_id=request.session_id,
            step=request.step,
            body=body,
        )
    return encode(header)


def expect_tensor(
    tensors: Mapping[str, torch.Tensor],
    name: str,
    dtype: torch.dtype | str | None = None,
    rank: int | None = None,
    last_dim: int | None = None,
) -> torch.Tensor:
    """The tensor `name`, checked for dtype, rank, size of the last dimension and, for floats, finite values.

    Raises WireError("bad_tensor") naming what was expected and what came.
    """
    tensor = tensors.get(name)
    if tensor is None:
        raise WireError(ErrorCode.BAD_TENSOR, f"message has no tensor {name!r} (has {sorted(tensors)})")
    if dtype is not None:
        wanted = DTYPES.get(dtype) if isinstance(dtype, str) else dtype
        if wanted is None:
            raise ValueError(f"unknown dtype name {dtype!r}")
        if tensor.dtype != wanted:
            raise WireError(ErrorCode.BAD_TENSOR, f"tensor {name!r} has dtype {tensor.dtype}, expected {wanted}")
    if rank is not None and tensor.dim() != rank:
        raise WireError(ErrorCode.BAD_TENSOR, f"tensor {name!r} has shape {list(tensor.shape)}, expected rank {rank}")
    if last_dim is not None and (tensor.dim() == 0 or tensor.shape[-1] != last_dim):
        raise WireError(
            ErrorCode.BAD_TENSOR,
            f"tensor {name!r} has shape {list(tensor.shape)}, expected last dim {last_dim}",
        )
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise WireError(ErrorCode.BAD_TENSOR, f"tensor {name!r} holds NaN or infinite values")
    return tensor
