"""The request bodies of the OpenAI API this server speaks, validated by pydantic (a failed check is a 400).

Fields OpenAI's clients send that change nothing here are accepted and ignored; those that would change the
answer and are not supported (penalties, tools) are refused, so nobody gets a silently different answer.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_CHOICES = 16
MAX_STOPS = 4
MAX_TOP_LOGPROBS = 5

PromptTokens = list[Annotated[int, Field(ge=0)]]


class Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(Lenient):
    include_usage: bool = False


class Sampling(Lenient):
    """What completions and chats share: how many tokens, how they are chosen, when to stop."""

    model: str = Field(min_length=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    user: str | None = None
    # Not OpenAI's: never stop on EOS, always generate the token limit (vLLM's name; benchmarks use it).
    ignore_eos: bool = False

    @model_validator(mode="after")
    def _supported(self) -> Sampling:
        if self.frequency_penalty or self.presence_penalty:
            raise ValueError("frequency_penalty and presence_penalty are not supported; leave them at 0")
        if isinstance(self.stop, list) and len(self.stop) > MAX_STOPS:
            raise ValueError(f"stop takes at most {MAX_STOPS} strings")
        return self

    @property
    def wanted_logprobs(self) -> int | None:
        return None

    @property
    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(Sampling):
    prompt: str | list[str] | PromptTokens | list[PromptTokens]
    max_tokens: int | None = Field(16, ge=0)
    echo: bool = False
    best_of: int | None = None
    # Log-probabilities of each generated token and of the `logprobs` likeliest ones (non-streamed answers).
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _one_prompt(self) -> CompletionRequest:
        if self.best_of not in (None, 1):
            raise ValueError("best_of is not supported")
        if self.echo:
            raise ValueError("echo is not supported")
        if self.logprobs is not None and self.stream:
            raise ValueError("logprobs come with non-streamed answers only")
        return self

    @property
    def wanted_logprobs(self) -> int | None:
        """How many likeliest tokens to list beside each token's log-probability, or None for none."""
        return self.logprobs

    def prompts(self) -> list[str | list[int]]:
        """The prompts, each text or token ids (a list of strings or of token lists is a batch of prompts)."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if prompt and all(isinstance(item, int) for item in prompt):
            return [[int(token) for token in prompt if isinstance(token, int)]]
        return [item if isinstance(item, str) else list(item) for item in prompt if not isinstance(item, int)]


class TextPart(Lenient):
    type: Literal["text"]
    text: str


class ChatMessage(Lenient):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[object] | None = None

    @model_validator(mode="after")
    def _supported_chat(self) -> ChatRequest:
        if self.logprobs and self.stream:
            raise ValueError("logprobs come with non-streamed answers only")
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.tools:
            raise ValueError("tools are not supported")
        return self

    @property
    def wanted_logprobs(self) -> int | None:
        """How many likeliest tokens to list beside each token's log-probability, or None for no log-probabilities."""
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def chat(self) -> list[dict[str, str]]:
        return [{"role": message.role, "content": message.text()} for message in self.messages]


class EmbeddingRequest(Lenient):
    model: str = Field(min_length=1)
    input: str | list[str] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None

    @model_validator(mode="after")
    def _supported(self) -> EmbeddingRequest:
        if self.dimensions is not None:
            raise ValueError("dimensions is not supported: the model's own size is returned")
        return self

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)
