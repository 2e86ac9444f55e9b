"""Open-loop load generator: streams chat completions and times every request.

Requests are sent at their arrival times whether or not earlier ones have finished
(open loop, as in the reference), each with ``ignore_eos``, ``max_tokens`` equal to its
profiled length and the decoding its profile was made with. Per request it records the
send, first-token and finish times, the token counts the server reports, and whether the
served text is the profiled one. A run is bounded by its request
count and a time limit; requests still open at the limit are cancelled and counted.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import httpx

from trail_scheduler.bench.workload import BenchRequest, Decoding, text_sha256


@dataclass
class RequestRecord:
    id: str
    arrival: float  # scheduled send time, seconds after the run started
    sent: float | None = None
    first_token: float | None = None
    finished: float | None = None
    prompt_tokens: int = 0
    output_tokens: int = 0
    expected_tokens: int = 0
    matches_profile: bool | None = None  # served text == profiled text (None: no profile to compare)
    error: str | None = None
    served_by: str = ""  # the endpoint's base URL

    @property
    def ok(self) -> bool:
        return self.error is None and self.finished is not None

    @property
    def latency(self) -> float:
        return self.finished - self.sent

    @property
    def ttft(self) -> float:
        return self.first_token - self.sent


class Route(Protocol):
    """Several endpoints behind one client: which one serves a request, chosen when it is sent."""

    async def choose(self, request: BenchRequest) -> str:
        """The base URL to send ``request`` to (the time this takes counts in its latency)."""

    def finished(self, base: str) -> None:
        """A request sent to ``base`` ended (served, failed or cancelled)."""


def request_body(model: str, request: BenchRequest, decoding: Decoding, extra: dict | None = None) -> dict:
    """The streamed chat request; ``extra`` adds top-level fields (``request_id``, ``vllm_xargs``)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": request.prompt}],
        "max_tokens": request.output_tokens,
        "ignore_eos": True,
        **decoding.body(request.id),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    return {**body, **(extra or {})}


async def _stream_one(
    client: httpx.AsyncClient, base: str, body: dict, record: RequestRecord, start: float, expected_sha: str | None
) -> None:
    text: list[str] = []
    async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as reply:
        if reply.status_code != 200:
            record.error = f"HTTP {reply.status_code}: {(await reply.aread()).decode(errors='replace')[:300]}"
            return
        async for line in reply.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                record.prompt_tokens = chunk["usage"].get("prompt_tokens", 0)
                record.output_tokens = chunk["usage"].get("completion_tokens", 0)
            choices = chunk.get("choices") or []
            content = (choices[0].get("delta") or {}).get("content") if choices else None
            if content:
                if record.first_token is None:
                    record.first_token = time.perf_counter() - start
                text.append(content)
    record.finished = time.perf_counter() - start
    if expected_sha is not None:
        record.matches_profile = text_sha256("".join(text)) == expected_sha
    if record.first_token is None:  # an answer whose tokens decode to no text
        record.first_token = record.finished


async def run_load(
    base: str | Route,
    model: str,
    requests: Sequence[BenchRequest],
    decoding: Decoding,
    time_limit: float,
    extra: Callable[[BenchRequest], dict | None] = lambda r: None,
    on_done: Callable[[RequestRecord], None] | None = None,
) -> tuple[list[RequestRecord], float]:
    """Send ``requests`` on their schedule to ``base``, or where ``base`` routes each; return the
    records and the run's wall time."""
    records = [RequestRecord(r.id, r.arrival, expected_tokens=r.output_tokens) for r in requests]
    limits = httpx.Limits(max_connections=len(requests) + 4, max_keepalive_connections=len(requests) + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(time_limit + 60), limits=limits) as client:
        start = time.perf_counter()

        async def one(request: BenchRequest, record: RequestRecord) -> None:
            await asyncio.sleep(max(0.0, request.arrival - (time.perf_counter() - start)))
            record.sent = time.perf_counter() - start
            record.served_by = base if isinstance(base, str) else await base.choose(request)
            try:
                body = request_body(model, request, decoding, extra(request))
                await _stream_one(client, record.served_by, body, record, start, request.text_sha256)
            except httpx.HTTPError as error:
                record.error = f"{type(error).__name__}: {error}"
            finally:
                if not isinstance(base, str):
                    base.finished(record.served_by)
            if on_done is not None:
                on_done(record)

        tasks = [asyncio.create_task(one(r, rec)) for r, rec in zip(requests, records)]
        done, pending = await asyncio.wait(tasks, timeout=time_limit)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        elapsed = time.perf_counter() - start
    for record in records:
        if record.finished is None and record.error is None:
            record.error = f"not finished within the {time_limit:.0f} s time limit"
    return records, elapsed
