"""The body of an embeddings answer: vectors as JSON floats, or base64 of little-endian float32 (what OpenAI's
Python client asks for by default)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import numpy

from swarm.client.run import EmbedResult
from swarm.serve.schema import EmbeddingRequest


def encode_vector(vector: Sequence[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(numpy.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return [float(value) for value in vector]


def embedding_response(request: EmbeddingRequest, results: Sequence[EmbedResult]) -> dict[str, Any]:
    tokens = sum(result.tokens for result in results)
    return {
        "object": "list",
        "data": [
            {
                "object": "embedding",
                "index": index,
                "embedding": encode_vector(result.embedding, request.encoding_format),
            }
            for index, result in enumerate(results)
        ],
        "model": request.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
