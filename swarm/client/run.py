"""One `swarm run`: resolve the model, find peers, plan the route, load the local parts, generate or embed.

`SwarmClient` is also the library entry point (tests, benchmarks, concurrent sessions): it holds the model's
local parts once and opens one session per request, each on its own sockets.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from swarm import transport
from swarm.client.checker import ShadowSession, StepChecker
from swarm.client.draft import DraftModel
from swarm.client.exclusions import load_exclusions, record_exclusions
from swarm.client.generate import Generation, SamplingParams, generate
from swarm.client.hop_trace import HopTrace
from swarm.client.local_parts import LocalParts
from swarm.client.resolve import Resolver
from swarm.client.routing import (
    BUSY,
    NO_ANSWER_CODES,
    RATE_LIMITED,
    BusyError,
    Candidates,
    PeerInfo,
    backoff_delay,
    candidates_for_model,
    fails_over,
    peers_with_rivals,
    route_avoiding,
    smooth_latencies,
    with_trusted_rates,
)
from swarm.client.session import (
    ComputeClient,
    InferenceSession,
    PeerFailure,
    expect_hidden,
    expect_logits,
    in_dtype,
    new_id,
    probe_rate,
    query_peers,
    run_encoder,
)
from swarm.client.speculative import generate_speculative
from swarm.config import Settings
from swarm.errors import SwarmError
from swarm.manifest import Manifest
from swarm.wire import Header, Hop, Kind

# Failovers one generation may go through before it gives up (refusals from busy peers do not count: the busy
# retry time bounds those).
MAX_FAILOVERS = 3
# A client older than this asks its peers for their info again before the next generation: their load and smoothed
# speeds change, and its own round trips to them are smoothed over these refreshes.
PEER_REFRESH_SECONDS = 10.0


def route_record(route: Sequence[Hop]) -> list[dict[str, Any]]:
    return [{"address": hop.address, "blocks": list(hop.blocks)} for hop in route]


@dataclass
class RunResult:
    generation: Generation
    # The route that produced the last token (another one than at the start after a failover).
    route: list[Hop]
    # One record per failover: the peer that failed ("peer"), its code, the error, "detect_seconds" (from the
    # failed request's start until the failure was known) and "seconds_lost" (from the failed request's start
    # until the step it belonged to came back from the new route: detection, re-planning, the new session and
    # the replay together).
    failovers: list[dict[str, Any]] = field(default_factory=list)
    # With --verify: steps checked, steps no other peer could check, peers excluded (see StepChecker.record).
    verification: dict[str, Any] | None = None
    # With --draft: rounds, drafted and accepted tokens (see SpeculationStats.record).
    speculation: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "text": self.generation.text,
            "tokens": self.generation.token_ids,
            "prompt_tokens": len(self.generation.prompt_ids),
            "stopped_on_eos": self.generation.stopped_on_eos,
            "route": route_record(self.route),
            "failovers": self.failovers,
            "timings": self.generation.timings(),
        }
        if self.verification is not None:
            record["verification"] = self.verification
        if self.speculation is not None:
            record["speculation"] = self.speculation
        return record


@dataclass
class EmbedResult:
    embedding: list[float]
    tokens: int
    route: list[Hop]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "embedding": self.embedding,
            "dimensions": len(self.embedding),
            "tokens": self.tokens,
            "route": route_record(self.route),
            "timings": {"seconds": round(self.seconds, 6)},
        }


class SwarmClient:
    """A model's local parts plus the peers that serve its blocks."""

    def __init__(
        self,
        manifest: Manifest,
        parts: LocalParts,
        peers: Sequence[PeerInfo],
        settings: Settings,
        spread_seed: int | None = None,
    ) -> None:
        self.manifest = manifest
        self.parts = parts
        self.peers = list(peers)
        self.settings = settings
        # The candidates the peers were found among, and those of them that did not answer (address → why).
        self.addresses = [peer.address for peer in peers]
        self.pinned = False
        self.unreachable: dict[str, str] = {}
        # Peers the DHT listed that were left out before asking them anything (public swarms: a key it does not
        # vouch for), address → why; explained with the unreachable ones.
        self.untrusted: dict[str, str] = {}
        # Peers whose outputs other peers contradicted (--verify, here or in earlier runs on this machine): not
        # routed through again.
        self.distrusted: set[str] = set(load_exclusions(settings.home))
        # The local draft model of speculative decoding (Settings.draft), loaded once; each generation drafts with
        # its own cache.
        draft_path = settings.draft if parts.causal else None
        self.draft = DraftModel.load(str(draft_path), parts.vocab_size) if draft_path is not None else None
        # The last rate each peer (by address) ran this client's probe at.
        self.measured: dict[str, float] = {}
        self._refreshed = time.monotonic()
        self._peers_lock = threading.Lock()
        self.context = transport.Context()
        # Counts requests, to take turns among equally good routes; clients started apart begin apart.
        self._requests = itertools.count(random.randrange(1 << 16) if spread_seed is None else spread_seed)
        # Tokenizers are not safe to share between threads; the torch modules are (inference only).
        self._tokenizer_lock = threading.Lock()

    @classmethod
    def connect(
        cls, reference: str, settings: Settings, route: Sequence[str] = (), spread_seed: int | None = None
    ) -> SwarmClient:
        """Resolve `reference`, fetch and load the local parts, and find the peers: the pinned `route` addresses,
        else those the DHT knows."""
        resolver = Resolver(settings)
        try:
            manifest, torrent_data = resolver.manifest(reference)
            return cls.from_resolved(resolver, manifest, torrent_data, route, spread_seed)
        finally:
            resolver.close()

    @classmethod
    def from_resolved(
        cls,
        resolver: Resolver,
        manifest: Manifest,
        torrent_data: bytes,
        route: Sequence[str] = (),
        spread_seed: int | None = None,
        require_peers: bool = True,
    ) -> SwarmClient:
        """Like `connect`, for a manifest already resolved (the caller closes `resolver`). Without
        `require_peers`, a DHT that knows no compute peer yet leaves the client without peers (a server finds
        them later) instead of failing."""
        parts = LocalParts(manifest, resolver.client_chunks(manifest, torrent_data))
        client = cls(manifest, parts, [], resolver.settings, spread_seed)
        try:
            addresses = list(route) or resolver.compute_addresses(manifest)
            client.untrusted = dict(resolver.left_out)
            client.find_peers(addresses, pinned=bool(route))
        except SwarmError:
            if require_peers or route:
                client.close()
                raise
        except BaseException:
            client.close()
            raise
        return client

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def causal(self) -> bool:
        """Whether the model generates text (else it is an encoder that embeds it)."""
        return self.parts.causal

    def discover(self, addresses: Sequence[str], pinned: bool) -> Candidates:
        """Ask each address for its info: the peers that serve this model, and the candidates that did not answer
        (skipped, pinned or not). A pinned peer that answers but serves another model is an error."""
        with self.endpoint() as endpoint:
            infos = query_peers(endpoint, addresses, timeout=self.settings.request_timeout)
        return candidates_for_model(self.manifest, infos, pinned=pinned)

    def find_peers(self, addresses: Sequence[str], pinned: bool) -> None:
        """Use the peers among `addresses` that serve this model (see `discover`); round trips to peers seen
        before are smoothed with the earlier ones."""
        candidates = self.discover(addresses, pinned)
        peers = self.trust_measured(smooth_latencies(self.peers, candidates.peers))
        with self._peers_lock:
            self.addresses, self.pinned = list(addresses), pinned
            self.peers = peers
            self.unreachable = {**candidates.unreachable, **self.untrusted}
            self._refreshed = time.monotonic()

    def trust_measured(self, peers: list[PeerInfo]) -> list[PeerInfo]:
        """`peers` with each claimed throughput capped by what this client measures: a one-token step through each
        peer whose speed decides between routes (a peer that claims to be fast is otherwise chosen every time)."""
        rivals = peers_with_rivals(peers) if self.parts.causal else []
        if not rivals:
            return peers
        before = dict(self.measured)
        with self.endpoint() as endpoint:
            measured = {
                peer.address: probe_rate(endpoint, peer, self.probe_input(peer))
                for peer in rivals
                if peer.free_sessions > 0
            }
        self.measured.update({address: rate for address, rate in measured.items() if rate is not None})
        return with_trusted_rates(peers, {peer.address for peer in rivals}, measured, before)

    def probe_input(self, peer: PeerInfo) -> dict[str, torch.Tensor]:
        """One step's input for a probe of `peer`: a random token, as the peer would see any prompt's first."""
        token = torch.tensor([[random.randrange(self.parts.vocab_size or 2)]])
        if self.parts.span is None:
            return {"input_ids": token}
        return {"hidden": in_dtype(self.parts.embed(token, 0), peer.dtype)}

    def refresh_peers(self, older_than: float = 0.0) -> None:
        """Ask the candidates for their info again (load, smoothed speeds), if the last answers are older than
        `older_than` seconds."""
        if self.addresses and time.monotonic() - self._refreshed >= older_than:
            self.find_peers(self.addresses, self.pinned)

    def plan(self, spread: int | None = None, failed: Collection[str] = (), busy: Collection[str] = ()) -> list[Hop]:
        """A route through the peers but the `failed` (and, while possible, the `busy`) ones; a request counter
        spreads requests over equally good routes. The error names candidates that did not answer."""
        spread = next(self._requests) if spread is None else spread
        with self._peers_lock:
            peers, candidates = self.peers, Candidates(self.peers, self.unreachable)
        try:
            return route_avoiding(self.manifest.num_blocks, peers, failed, busy, spread)
        except SwarmError as error:
            raise candidates.explain(error) from None

    def endpoint(self) -> ComputeClient:
        """A new client endpoint (reply socket and dealers) for one request: sockets are not shared by threads."""
        return ComputeClient.for_peers(self.settings, self.context, self.peers)

    # ----- generation -----

    def encode(self, prompt: str) -> list[int]:
        with self._tokenizer_lock:
            return self.parts.encode_prompt(prompt)

    def encode_chat(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """Token ids of a chat (`{"role", "content"}` messages) in the model's own chat template, ready for the
        assistant's answer. SwarmError when the model has no template or the template rejects the chat."""
        tokenizer = self.parts.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise SwarmError(f"{self.manifest.name} has no chat template: use a completion with a prompt instead")
        with self._tokenizer_lock:
            try:
                text = tokenizer.apply_chat_template(
                    [dict(m) for m in messages], add_generation_prompt=True, tokenize=False
                )
            except Exception as error:  # jinja raises its own types; any of them means this chat does not fit
                raise SwarmError(f"{self.manifest.name}'s chat template rejected the messages: {error}") from error
            # The template writes the special tokens it wants (BOS among them): the tokenizer must add none.
            ids = tokenizer(str(text), add_special_tokens=False)["input_ids"]
        return [int(token) for token in ids]

    def fit_to_context(self, prompt_length: int, max_new_tokens: int) -> int:
        """New tokens that fit the model's context after the prompt; SwarmError when the prompt alone does not."""
        context = self.parts.context_length
        if context is None:
            return max_new_tokens
        if prompt_length >= context:
            raise SwarmError(
                f"the prompt has {prompt_length} tokens, but {self.manifest.name} takes at most {context} positions "
                "(prompt and generated tokens together); shorten the prompt"
            )
        return min(max_new_tokens, context - prompt_length)

    def generate(
        self,
        prompt: str | Sequence[int],
        max_new_tokens: int,
        params: SamplingParams,
        on_text: Callable[[str], None] | None = None,
        ban_eos: bool = False,
        route: Sequence[Hop] | None = None,
        pinned: bool = True,
        should_stop: Callable[[], bool] | None = None,
        on_token: Callable[[int, torch.Tensor], None] | None = None,
    ) -> RunResult:
        """Generate a continuation of `prompt` (text, or token ids) through the swarm; with Settings.draft,
        speculatively (swarm.client.speculative: the same tokens when greedy, the same distribution when sampling).

        `route`: the route to use; with `pinned` a failure on it ends the generation (a busy peer is waited for),
        otherwise it is only the first route and failures fail over as on a planned one. `should_stop` is asked
        after each token; the session is closed on every hop when generation ends, whatever ends it."""
        if not self.parts.causal:
            raise SwarmError(f"{self.manifest.name} is an encoder: use --embed instead of --prompt")
        prompt_ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        max_new_tokens = self.fit_to_context(len(prompt_ids), max_new_tokens)
        if ban_eos:
            params = SamplingParams(
                params.temperature,
                params.top_k,
                params.top_p,
                params.seed,
                tuple(sorted(set(params.banned_tokens) | self.parts.eos_token_ids)),
            )
        self.refresh_peers(older_than=PEER_REFRESH_SECONDS)
        steps = _FailoverSteps(
            self,
            list(route) if route is not None else None,
            route is not None and pinned,
            len(prompt_ids) + max_new_tokens,
        )
        loop: dict[str, Any] = {
            "eos_token_ids": set() if ban_eos else self.parts.eos_token_ids,
            "on_text": on_text,
            "tokenizer": _LockedDecoder(self.parts.tokenizer, self._tokenizer_lock),
            "should_stop": should_stop,
            "on_token": on_token,
        }
        speculation = None
        try:
            if self.draft is None:
                generation = generate(steps, prompt_ids, max_new_tokens, params, **loop)
            else:
                generation, stats = generate_speculative(
                    steps.every_position, self.draft.fresh(), prompt_ids, max_new_tokens, params, **loop
                )
                speculation = stats.record()
        finally:
            steps.close()
            if steps.checker is not None:
                record_exclusions(self.settings.home, self.manifest.name, steps.checker.excluded)
        verification = steps.checker.record() if steps.checker is not None else None
        return RunResult(generation, steps.route or [], steps.failovers, verification, speculation)

    def run_step(
        self, session: InferenceSession, ids: torch.Tensor, start: int, all_positions: bool = False,
        trace: HopTrace | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """New tokens `ids` at positions [start, ...) through the session's route: the last position's logits
        (batch, vocab), or every position's (batch, tokens, vocab). `trace` (a span route's) gets what every hop
        received and the last one gave."""
        last_peer = session.route[-1].address
        positions = (start, start + ids.shape[1])
        if self.parts.span is None:
            # A whole replica: token ids in, logits out.
            outputs = session.step({"input_ids": ids.contiguous()}, positions, all_positions)
            logits = expect_logits(outputs, last_peer, self.parts.vocab_size, rank=3 if all_positions else 2)
            expected = tuple(ids.shape) if all_positions else tuple(ids.shape[:1])
            if tuple(logits.shape[:-1]) != expected:
                raise SwarmError(
                    f"peer {last_peer} returned logits of shape {list(logits.shape)} for {list(ids.shape)} tokens"
                )
            return logits.float()
        embedded = self.hidden_for(session.route[0], self.parts.embed(ids, start))
        hidden = self.run_hidden(session, embedded, start)
        if trace is not None:
            trace.record_step(start, ids.shape[1], {0: embedded, **session.tees, session.route[-1].blocks[1]: hidden})
        return self.parts.head(hidden, all_positions)

    def run_hidden(self, session: InferenceSession, hidden: torch.Tensor, start: int) -> torch.Tensor:
        """Hidden states at positions [start, ...) through the session's route (of spans): the last hop's output."""
        last_peer = session.route[-1].address
        outputs = session.step({"hidden": hidden}, (start, start + hidden.shape[1]))
        output = expect_hidden(outputs, last_peer, self.parts.hidden_size)
        if tuple(output.shape[:2]) != tuple(hidden.shape[:2]):
            raise SwarmError(
                f"peer {last_peer} returned hidden states of shape {list(output.shape)} for {hidden.shape[1]} positions"
            )
        return output

    def run_stateless(self, endpoint: ComputeClient, route: list[Hop], ids: torch.Tensor) -> torch.Tensor:
        """Token ids at positions [0, n) through `route` without a session (a check of a step): last logits."""
        if self.parts.span is None:
            header = Header(kind=Kind.STEP, request_id=new_id(), positions=(0, ids.shape[1]))
            reply = endpoint.request(route, header, {"input_ids": ids.contiguous()})
            return expect_logits(reply.tensors, route[-1].address, self.parts.vocab_size).float()
        hidden = self.hidden_for(route[0], self.parts.embed(ids, 0))
        return self.parts.head(run_encoder(endpoint, route, hidden, None))

    def checker(self, endpoint: ComputeClient, max_length: int) -> StepChecker | None:
        """What checks a fraction of one generation's steps (Settings.verify_fraction), or None."""
        if self.settings.verify_fraction <= 0:
            return None
        checker = StepChecker(
            self.settings.verify_fraction,
            lambda: list(self.peers),
            lambda route, ids: self.run_stateless(endpoint, route, ids),
            replica=self.parts.span is None,
            distrusted=self.distrusted,
        )
        if self.parts.span is None:
            # A replica's route is one hop, token ids in: the shadow runs the whole route.
            checker.open_shadow = lambda route: self.open_shadow(endpoint, route, max_length)
        else:
            checker.trace = HopTrace(self.parts.hidden_size)
            checker.open_hop_shadow = lambda hop: self.open_hop_shadow(endpoint, hop, max_length)
        return checker

    def open_shadow(self, endpoint: ComputeClient, route: list[Hop], max_length: int) -> ShadowSession:
        """A session on `route` that a checker feeds as the generation goes (swarm.client.checker)."""
        session = InferenceSession(endpoint, route, max_length)
        try:
            session.open()
        except BaseException:
            session.abandon()
            raise
        return ShadowSession(lambda ids, start: self.run_step(session, ids, start), session.close)

    def open_hop_shadow(self, endpoint: ComputeClient, hop: Hop, max_length: int) -> ShadowSession:
        """A session of one hop, fed the hidden states its counterpart on the route received (checker.py)."""
        session = InferenceSession(endpoint, [hop], max_length)
        try:
            session.open()
        except BaseException:
            session.abandon()
            raise
        return ShadowSession(lambda hidden, start: self.run_hidden(session, self.hidden_for(hop, hidden), start),
                             session.close)  # fmt: skip

    def hidden_for(self, hop: Hop, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states in the dtype the first hop computes in (it says so in its info; peers may run a
        half-precision checkpoint in float32, or the other way round)."""
        dtype = next((peer.dtype for peer in self.peers if peer.address == hop.address), "")
        return in_dtype(hidden, dtype)

    def failover_steps(self, max_length: int) -> _FailoverSteps:
        """The `NextLogits` of one generation of up to `max_length` positions on planned routes that fail over as
        `generate`'s do; the caller closes it (an ensemble runs one per model)."""
        self.refresh_peers(older_than=PEER_REFRESH_SECONDS)
        return _FailoverSteps(self, None, False, max_length)

    def decoder(self) -> _LockedDecoder:
        """The tokenizer's `decode`, safe to call from any thread."""
        return _LockedDecoder(self.parts.tokenizer, self._tokenizer_lock)

    # ----- embeddings -----

    def embed(self, text: str, route: Sequence[Hop] | None = None) -> EmbedResult:
        """The pooled last hidden state of `text` through an encoder's route."""
        if self.parts.causal:
            raise SwarmError(f"{self.manifest.name} is a causal language model: use --prompt instead of --embed")
        with self._tokenizer_lock:
            input_ids, attention_mask = self.parts.encode_for_embedding(text)
        context = self.parts.context_length
        if context is not None and input_ids.shape[1] > context:
            raise SwarmError(
                f"the text has {input_ids.shape[1]} tokens, but {self.manifest.name} takes at most {context}; "
                "shorten it"
            )
        hops = list(route) if route is not None else self.plan()
        started = time.perf_counter()
        with self.endpoint() as endpoint:
            hidden = run_encoder(
                endpoint, hops, self.hidden_for(hops[0], self.parts.embed_whole(input_ids)), attention_mask
            )
        if tuple(hidden.shape[:2]) != tuple(input_ids.shape):
            raise SwarmError(f"peer {hops[-1].address} returned hidden states of shape {list(hidden.shape)}")
        vector = self.parts.pool(hidden, attention_mask)[0]
        return EmbedResult(
            [float(value) for value in vector], int(input_ids.shape[1]), hops, time.perf_counter() - started
        )

    def close(self) -> None:
        self.context.close(linger_ms=0)

    def __enter__(self) -> SwarmClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class _FailoverSteps:
    """The `NextLogits` of one generation: runs steps in a session along a route, and when a peer fails in a way
    another route can avoid (it is gone, busy, lost the session), plans a route without it, opens a new session
    and replays every token so far as one prefill, so generation goes on where it was. While only busy peers stand
    in the way it waits, with growing pauses, up to Settings.busy_retry_seconds, and then fails saying so.

    A pinned route is kept: a failure on it propagates (a busy peer on it is waited for, as above).
    """

    def __init__(self, client: SwarmClient, route: list[Hop] | None, pinned: bool, max_length: int) -> None:
        self.client = client
        self.pinned = pinned
        # None: planned when the first session opens (so that a busy swarm is waited for there too). A first
        # route through a distrusted peer is planned anew unless pinned (then the check that failed it fails it).
        distrusted = route is not None and not pinned and any(hop.address in client.distrusted for hop in route)
        self.route = None if distrusted else route
        self.max_length = max_length
        self.endpoint = client.endpoint()
        self.session: InferenceSession | None = None
        self.history: torch.Tensor | None = None
        self.failovers: list[dict[str, Any]] = []
        # Peers gone for this generation, and peers that refused a session (tried again after a pause).
        self.failed: set[str] = set(client.distrusted)
        self.busy: set[str] = set()
        self.checker = client.checker(self.endpoint, max_length)
        self.failures = 0
        self.busy_tries = 0
        self.busy_waited = 0.0

    def __call__(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        """The last position's logits after new tokens `ids` at [start, ...) (the `NextLogits` of `generate`)."""
        return self._run(ids, start, False)

    def every_position(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        """The logits of every new position (speculative decoding's `EveryLogits`); a start before the end of the
        tokens so far takes the later ones back, on the route and in the history a failover replays."""
        return self._run(ids, start, True)

    def _run(self, ids: torch.Tensor, start: int, every: bool) -> torch.Tensor:
        if self.history is not None:
            self.history = self.history[:, :start]
        failed_attempts: list[tuple[dict[str, Any], float]] = []
        while True:
            attempt_started = time.monotonic()
            try:
                logits = self._attempt(ids, start, every)
                break
            except PeerFailure as failure:
                failed_attempts.append((self._fail_over(failure, attempt_started), attempt_started))
        done = time.monotonic()
        for record, started in failed_attempts:
            record["seconds_lost"] = round(done - started, 4)
        self.history = ids if self.history is None else torch.cat([self.history, ids], dim=1)
        return logits

    def _attempt(self, ids: torch.Tensor, start: int, every: bool) -> torch.Tensor:
        new_tokens = ids.shape[1]
        if self.session is None:
            if self.route is None:
                self.route = self._plan()
            # Checks of one hop alone need every hop's input: the hops then send copies of it (tees).
            tee = self.checker is not None and self.checker.trace is not None
            self.session = InferenceSession(self.endpoint, self.route, self.max_length, tee=tee)
            self.session.open()
            if self.history is not None:
                # A new route: replay everything the old one had cached.
                ids, start = torch.cat([self.history, ids], dim=1), 0
        trace = self.checker.trace if self.checker is not None else None
        logits = self.client.run_step(self.session, ids, start, every, trace)
        if every:
            logits = logits[:, -new_tokens:]  # a replay after a failover returns the replayed positions too
        if self.checker is not None:
            so_far = ids if start == 0 or self.history is None else torch.cat([self.history, ids], dim=1)
            self.checker.check(list(self.session.route), so_far, logits[:, -1] if every else logits, self.failed)
        return logits

    def _fail_over(self, failure: PeerFailure, started: float) -> dict[str, Any]:
        """Record the failure and drop the session, or raise when no other route may help."""
        busy = failure.code in (BUSY, RATE_LIMITED)
        if not fails_over(failure.code) or (not busy and (self.pinned or self.failures >= MAX_FAILOVERS)):
            raise failure
        record: dict[str, Any] = {"peer": failure.address, "code": failure.code, "error": str(failure)}
        record["detect_seconds"] = round(time.monotonic() - started, 4)
        self.failovers.append(record)
        self._drop_session(gone=failure.address)
        if failure.code in NO_ANSWER_CODES:
            self.endpoint.dealers.drop(failure.address)
        if busy:
            self.busy.add(failure.address)
            if self.pinned:
                self._back_off(str(failure))
        else:
            self.failures += 1
            self.failed.add(failure.address)
        if not self.pinned:
            self.route = None
        return record

    def _plan(self) -> list[Hop]:
        """A route around the failed peers and, while possible, the busy ones; while only busy peers remain, pause
        and ask the peers for their load again."""
        while True:
            try:
                return self.client.plan(failed=self.failed, busy=self.busy)
            except BusyError as error:
                self._back_off(str(error))
                self.busy.clear()
                self.client.refresh_peers()
            except SwarmError as error:
                if not self.failovers:
                    raise
                raise SwarmError(f"{self.failovers[-1]['error']}; no other route: {error}") from error

    def _back_off(self, reason: str) -> None:
        """Pause before trying busy peers again; BusyError once the pauses would pass the busy retry time."""
        delay = backoff_delay(self.busy_tries, random.random())
        if self.busy_waited + delay > self.client.settings.busy_retry_seconds:
            raise BusyError(
                f"the swarm is busy: {reason}; gave up after {self.busy_tries + 1} tries in {self.busy_waited:.1f} s "
                "(SWARM_BUSY_RETRY sets how long to keep trying)"
            )
        time.sleep(delay)
        self.busy_tries += 1
        self.busy_waited += delay

    def _drop_session(self, gone: str | None = None) -> None:
        """After a failure, free the session on the other hops without waiting; at the end, close it in order."""
        if self.session is None:
            return
        if gone is None:
            self.session.close()
        else:
            self.session.abandon({gone})
        self.session = None

    def close(self) -> None:
        self._drop_session()
        if self.checker is not None:
            self.checker.close()
        self.endpoint.close()


class _LockedDecoder:
    def __init__(self, tokenizer: Any, lock: threading.Lock) -> None:
        self.tokenizer = tokenizer
        self.lock = lock

    def decode(self, token_ids: list[int], skip_special_tokens: bool = False) -> str:
        with self.lock:
            return str(self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens))
