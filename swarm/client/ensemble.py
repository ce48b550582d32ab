"""Ensembles: several models that share a tokenizer generate (or embed) together, each on its own peers.

`mean-logits` averages the models' next-token logits in float32 at every step and chooses from the mean as one
model would (greedy, temperature, top-k, top-p). `vote` lets each model choose its own token (argmax when greedy;
when sampling, a draw from its own filtered distribution with a generator derived from the seed) and the token
most models chose wins; a tie goes to the tied token with the higher mean logit, then to the lower id. `mean`
averages encoders' pooled embeddings.

Each model's steps keep their own failover (`SwarmClient.failover_steps`); the models' steps of one token run at
once, the first model's in the calling thread and each other one's in a thread of its own, since each is a
network round trip. `EnsembleClient` offers what the rest of the code uses of a `SwarmClient`.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from swarm.client.generate import (
    ChooseTokens,
    Generation,
    SamplingParams,
    TokenDecoder,
    generate,
    make_generator,
    next_tokens,
)
from swarm.client.local_parts import LocalParts
from swarm.client.resolve import Resolver, check_policy
from swarm.client.run import EmbedResult, RunResult, SwarmClient, route_record
from swarm.errors import SwarmError
from swarm.manifest import Manifest
from swarm.wire import Hop

MEAN_LOGITS, VOTE, MEAN = "mean-logits", "vote", "mean"

# Texts two tokenizers must encode alike (besides having one vocabulary) to count as one tokenizer: spaces, case,
# punctuation, digits, accents, other scripts, an emoji and markup exercise normalizers and pre-tokenizers.
TOKENIZER_PROBES = (
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "  Two spaces,\ttabs\tand\nnew lines\n\n",
    "MiXeD CaSe 123 4567 3.14159 1e-3 x*y=(a+b)/2; [1, 2]",
    "naïve café, Grüße, 東京, Москва, 🙂",
    "<s></s><pad>[CLS][SEP] <|endoftext|> def f(x):\n    return x",
)


# ----- the combination rules (pure) -----


def stack_logits(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """The models' logits (batch, vocab) as one float32 tensor (models, batch, vocab), cut to the narrowest
    vocabulary: models of one tokenizer may pad their embedding matrices to different widths, and the ids past
    the narrowest are no tokenizer's tokens."""
    width = min(int(item.shape[-1]) for item in logits)
    return torch.stack([item[..., :width].float() for item in logits])


def mean_logits(stacked: torch.Tensor) -> torch.Tensor:
    """The mean over models (dim 0) of stacked float32 logits."""
    return stacked.float().mean(dim=0)


def vote(choices: Sequence[int], mean: torch.Tensor) -> int:
    """The token most models chose; among tied tokens the one with the higher mean logit, then the lower id."""
    counts = Counter(choices)
    most = max(counts.values())
    tied = [token for token, count in counts.items() if count == most]
    return max(tied, key=lambda token: (float(mean[token]), -token))


def derive_seed(seed: int, index: int) -> int:
    """Model `index`'s seed for a vote with sampling: distinct per model, repeatable per seed."""
    return (seed * 0x9E3779B97F4A7C15 + index + 1) % (1 << 63)


def vote_generators(seed: int | None, models: int) -> list[torch.Generator]:
    """One generator per model for a vote with sampling (unseeded ones when `seed` is None)."""
    return [make_generator(None if seed is None else derive_seed(seed, index)) for index in range(models)]


def vote_tokens(stacked: torch.Tensor, params: SamplingParams, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One token per row of stacked logits (models, batch, vocab): each model chooses from its own logits (argmax
    when greedy, else a draw from its own filtered distribution with its own generator), then the vote."""
    choices = [next_tokens(stacked[index], params, generators[index]).tolist() for index in range(stacked.shape[0])]
    mean = mean_logits(stacked)
    rows = range(stacked.shape[1])
    return torch.tensor([vote([row_choices[row] for row_choices in choices], mean[row]) for row in rows])


def mean_embedding(vectors: Sequence[Sequence[float]]) -> list[float]:
    """The float32 mean of the models' pooled embeddings."""
    return [float(value) for value in torch.tensor(vectors, dtype=torch.float32).mean(dim=0)]


# ----- who may be an ensemble -----


def tokenizer_difference(first: Any, other: Any) -> str | None:
    """How two tokenizers differ, or None when they are one: the same vocabulary id for id (logits are averaged
    and votes counted by id) and the same ids for every probe text (normalizers, pre-tokenizers and added BOS/EOS
    do not show in a vocabulary). Files are not compared: one tokenizer saved by different library versions, or
    converted from a slow one, is written differently."""
    vocabulary, other_vocabulary = first.get_vocab(), other.get_vocab()
    if len(vocabulary) != len(other_vocabulary):
        return f"vocabularies of {len(vocabulary)} and {len(other_vocabulary)} tokens"
    if vocabulary != other_vocabulary:
        return "their vocabularies give tokens different ids"
    for probe in TOKENIZER_PROBES:
        if first(probe)["input_ids"] != other(probe)["input_ids"]:
            return f"they encode {probe!r} differently"
    return None


def check_members(parts: Sequence[LocalParts]) -> None:
    """The models make an ensemble: of one kind, one tokenizer and, for encoders, one embedding size."""
    if len(parts) < 2:
        raise SwarmError("an ensemble needs at least two models")
    first = parts[0]
    for other in parts[1:]:
        names = f"{first.manifest.name} and {other.manifest.name}"
        if other.causal != first.causal:
            kinds = ["a causal language model" if part.causal else "an encoder" for part in (first, other)]
            raise SwarmError(
                f"{first.manifest.name} is {kinds[0]} but {other.manifest.name} is {kinds[1]}: an ensemble's "
                "models must be of one kind"
            )
        difference = tokenizer_difference(first.tokenizer, other.tokenizer)
        if difference is not None:
            raise SwarmError(f"{names} have different tokenizers ({difference}): an ensemble's models must share one")
        if not first.causal and first.hidden_size != other.hidden_size:
            raise SwarmError(
                f"{names} embed in {first.hidden_size} and {other.hidden_size} dimensions: an ensemble's encoders "
                "must embed in the same number"
            )


# ----- results -----


@dataclass
class ModelRoute:
    """What one model of an ensemble went through."""

    name: str
    route: list[Hop]
    failovers: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"model": self.name, "route": route_record(self.route), "failovers": self.failovers}


@dataclass
class EnsembleRunResult(RunResult):
    """A generation by an ensemble: `route` holds every model's hops, `failovers` every model's failovers
    (each naming its model), and `models` each model's own."""

    policy: str = MEAN_LOGITS
    models: list[ModelRoute] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return super().to_json() | {"ensemble": self.policy, "models": [model.to_json() for model in self.models]}


@dataclass
class EnsembleEmbedResult(EmbedResult):
    """An ensemble's mean embedding: `route` holds every model's hops, `models` each model's own."""

    policy: str = MEAN
    models: list[ModelRoute] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        record = super().to_json() | {"ensemble": self.policy}
        record["models"] = [{"model": model.name, "route": route_record(model.route)} for model in self.models]
        return record


# ----- the client -----


class _ModelSteps(Protocol):
    """What the ensemble uses of a model's failover steps (`SwarmClient.failover_steps`)."""

    route: list[Hop] | None
    failovers: list[dict[str, Any]]

    def __call__(self, ids: torch.Tensor, start: int) -> torch.Tensor: ...

    def close(self) -> None: ...


class _EnsembleSteps:
    """The `NextLogits` of one ensemble generation: every model's step of the same tokens at once, each through
    its own failover steps; returns the mean logits and keeps the models' own (`stacked`) for a vote."""

    def __init__(self, clients: Sequence[SwarmClient], max_length: int) -> None:
        self.clients = list(clients)
        self.steps: list[_ModelSteps] = []
        self.threads: list[ThreadPoolExecutor] = []
        self.stacked: torch.Tensor | None = None
        try:
            for client in self.clients:
                self.steps.append(client.failover_steps(max_length))
        except BaseException:
            self.close()
            raise
        # Each model after the first steps in a thread of its own (so its sockets stay with one thread).
        self.threads = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ensemble-{client.manifest.name}")
            for client in self.clients[1:]
        ]

    def __call__(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        futures = [thread.submit(steps, ids, start) for thread, steps in zip(self.threads, self.steps[1:], strict=True)]
        try:
            first = self.steps[0](ids, start)
        finally:
            # Every model's step is over before the error (if any) ends the generation and closes the sessions.
            wait(futures)
        self.stacked = stack_logits([first, *(future.result() for future in futures)])
        return mean_logits(self.stacked)

    def voter(self, seed: int | None) -> ChooseTokens:
        """A `ChooseTokens` that votes among the models' own choices of the last step."""
        generators = vote_generators(seed, len(self.steps))

        def choose(_mean: torch.Tensor, params: SamplingParams, _generator: torch.Generator) -> torch.Tensor:
            if self.stacked is None:  # the generation loop steps before it chooses; this is a bug, not input
                raise RuntimeError("an ensemble vote was asked for before any step")
            return vote_tokens(self.stacked, params, generators)

        return choose

    def routes(self) -> list[ModelRoute]:
        return [
            ModelRoute(client.manifest.name, list(steps.route or []), list(steps.failovers))
            for client, steps in zip(self.clients, self.steps, strict=True)
        ]

    def close(self) -> None:
        for thread in self.threads:
            thread.shutdown(wait=True)
        for steps in self.steps:
            steps.close()


class EnsembleClient:
    """Several `SwarmClient`s of one kind and one tokenizer that generate (`mean-logits`, `vote`) or embed
    (`mean`) together. It owns the clients: closing it closes them (a constructor that refuses them does not)."""

    def __init__(self, clients: Sequence[SwarmClient], policy: str) -> None:
        check_members([client.parts for client in clients])
        check_policy(policy, clients[0].parts.causal)
        self.clients = list(clients)
        self.policy = policy

    @classmethod
    def from_resolved(
        cls,
        resolver: Resolver,
        resolved: Sequence[tuple[Manifest, bytes]],
        policy: str,
        route: Sequence[str] = (),
        spread_seed: int | None = None,
    ) -> EnsembleClient:
        """Load each model's local parts and check that they make an ensemble before finding each model's peers:
        those of the `route` addresses that serve it, else those the DHT knows (the caller closes `resolver`)."""
        parts = [LocalParts(manifest, resolver.client_chunks(manifest, data)) for manifest, data in resolved]
        clients = [SwarmClient(part.manifest, part, [], resolver.settings, spread_seed) for part in parts]
        try:
            ensemble = cls(clients, policy)
            for client in clients:
                client.find_peers(list(route) or resolver.compute_addresses(client.manifest), pinned=False)
                if route and not client.peers and not client.unreachable:
                    raise SwarmError(
                        f"no --route peer serves {client.manifest.name}: an ensemble's route lists peers of every model"
                    )
        except BaseException:
            for client in clients:
                client.close()
            raise
        return ensemble

    @property
    def name(self) -> str:
        return "+".join(client.manifest.name for client in self.clients)

    @property
    def causal(self) -> bool:
        return self.clients[0].parts.causal

    @property
    def eos_token_ids(self) -> set[int]:
        """Any model's end of sequence ends the ensemble's."""
        return set().union(*(client.parts.eos_token_ids for client in self.clients))

    def encode(self, prompt: str) -> list[int]:
        return self.clients[0].encode(prompt)

    def decoder(self) -> TokenDecoder:
        """The (shared) tokenizer's `decode`, safe to call from any thread."""
        return self.clients[0].decoder()

    def encode_chat(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """A chat in the first model's chat template (the tokenizers are one; their templates may differ)."""
        return self.clients[0].encode_chat(messages)

    def fit_to_context(self, prompt_length: int, max_new_tokens: int) -> int:
        """New tokens that fit every model's context after the prompt."""
        return min(client.fit_to_context(prompt_length, max_new_tokens) for client in self.clients)

    def generate(
        self,
        prompt: str | Sequence[int],
        max_new_tokens: int,
        params: SamplingParams,
        on_text: Callable[[str], None] | None = None,
        ban_eos: bool = False,
        should_stop: Callable[[], bool] | None = None,
        on_token: Callable[[int, torch.Tensor], None] | None = None,
    ) -> EnsembleRunResult:
        """Generate a continuation of `prompt` (text, or token ids) with every model at each step, combined by the
        policy; each model fails over on its own, and its sessions are closed when generation ends."""
        if not self.causal:
            raise SwarmError(f"{self.name} is an ensemble of encoders: use --embed instead of --prompt")
        prompt_ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        max_new_tokens = self.fit_to_context(len(prompt_ids), max_new_tokens)
        eos = self.eos_token_ids
        if ban_eos:
            params = dataclasses.replace(params, banned_tokens=tuple(sorted(set(params.banned_tokens) | eos)))
        steps = _EnsembleSteps(self.clients, len(prompt_ids) + max_new_tokens)
        try:
            generation = generate(
                steps,
                prompt_ids,
                max_new_tokens,
                params,
                eos_token_ids=set() if ban_eos else eos,
                on_text=on_text,
                tokenizer=self.clients[0].decoder(),
                should_stop=should_stop,
                on_token=on_token,
                choose=steps.voter(params.seed) if self.policy == VOTE else next_tokens,
            )
        finally:
            steps.close()
        return self._result(generation, steps.routes())

    def _result(self, generation: Generation, models: list[ModelRoute]) -> EnsembleRunResult:
        route = [hop for model in models for hop in model.route]
        failovers = [{"model": model.name, **record} for model in models for record in model.failovers]
        return EnsembleRunResult(generation, route, failovers, policy=self.policy, models=models)

    def embed(self, text: str) -> EnsembleEmbedResult:
        """The mean of the models' pooled embeddings of `text`, each computed on its own peers at once."""
        if self.causal:
            raise SwarmError(f"{self.name} is an ensemble of causal language models: use --prompt instead of --embed")
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=len(self.clients), thread_name_prefix="ensemble") as pool:
            results = list(pool.map(lambda client: client.embed(text), self.clients))
        models = [
            ModelRoute(client.manifest.name, result.route) for client, result in zip(self.clients, results, strict=True)
        ]
        return EnsembleEmbedResult(
            mean_embedding([result.embedding for result in results]),
            results[0].tokens,
            [hop for model in models for hop in model.route],
            time.perf_counter() - started,
            policy=self.policy,
            models=models,
        )

    def close(self) -> None:
        for client in self.clients:
            client.close()

    def __enter__(self) -> EnsembleClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
