"""Log-probabilities in the shapes of OpenAI's completions (`logprobs: N`) and chats (`logprobs: true`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from swarm.client.generate import TokenDecoder
from swarm.serve.generation import TokenLogprob


def completion_logprobs(tokens: Sequence[TokenLogprob], decoder: TokenDecoder) -> dict[str, Any]:
    texts = [decoder.decode([item.token]) for item in tokens]
    offsets, offset = [], 0
    for text in texts:
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": texts,
        "token_logprobs": [item.logprob for item in tokens],
        "top_logprobs": [{decoder.decode([token]): logprob for token, logprob in item.top} for item in tokens],
        "text_offset": offsets,
    }


def chat_logprobs(tokens: Sequence[TokenLogprob], decoder: TokenDecoder) -> dict[str, Any]:
    def entry(token: int, logprob: float) -> dict[str, Any]:
        text = decoder.decode([token])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {
        "content": [
            entry(item.token, item.logprob) | {"top_logprobs": [entry(token, logprob) for token, logprob in item.top]}
            for item in tokens
        ]
    }
