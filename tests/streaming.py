"""Stream one OpenAI-style completion and count its tokens the way a client can rely on.

vLLM merges streamed deltas when the server's producer gets ahead of the HTTP consumer
(``RequestOutputCollector``), so the number of ``data:`` chunks is not the number of tokens
on a busy machine. The usage block (``stream_options.include_usage``) is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class Streamed:
    tokens: int  # completion tokens, from the final usage block
    finish: str | None


def stream_completion(url: str, body: dict, timeout: float = 300) -> Streamed:
    """POST ``body`` with streaming and usage on; fail on any status but 200."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    tokens, finish = 0, None
    with httpx.stream("POST", url, json=body, timeout=timeout) as reply:
        assert reply.status_code == 200, reply.read()
        for line in reply.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices") or []:
                finish = choice.get("finish_reason") or finish
    return Streamed(tokens, finish)
