"""The sampled protocol on stock vLLM: long seeded prompts arriving together.

Stock vLLM 0.32 on CPU dies on a seeded request whose prompt is prefilled in chunks (its
sampler rewinds the request's CPU generator with ``set_offset``; checked by hand: a seeded
1,100-token prompt under ``--max-num-batched-tokens 1024`` takes the engine down with a
500). Under ``--decoding sampled`` the bench starts every engine without chunked prefill
and with a token budget that fits the longest request; here three long seeded prompts
arrive together and are all served, with the same answers when sent again.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from trail_scheduler.bench.config import engine_args
from trail_scheduler.bench.servers import start_stock_vllm
from trail_scheduler.bench.workload import DECODINGS

pytestmark = pytest.mark.engine


def test_stock_vllm_serves_long_seeded_prompts_together_under_the_sampled_protocol(tmp_path):
    sampled = DECODINGS["sampled"]
    server = start_stock_vllm(tmp_path, *engine_args(4, sampled))
    try:
        model = server.served_model()
        prompts = {
            f"long-{i}": f"Summarise this list in one line: {'apples, pears, plums, ' * 150}{i}" for i in (1, 2, 3)
        }

        async def answers() -> dict[str, str]:
            async with httpx.AsyncClient(timeout=300) as client:

                async def one(prompt_id: str, text: str) -> str:
                    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 8}
                    reply = await client.post(f"{server.base}/v1/chat/completions", json=body | sampled.body(prompt_id))
                    assert reply.status_code == 200, reply.text[:300]
                    assert reply.json()["usage"]["prompt_tokens"] > 1024  # two of them fill more than a step
                    return reply.json()["choices"][0]["message"]["content"]

                texts = await asyncio.gather(*(one(i, text) for i, text in prompts.items()))
                return dict(zip(prompts, texts))

        first = asyncio.run(answers())
        assert asyncio.run(answers()) == first  # the per-prompt seeds hold: the same answers again
        assert server.process.poll() is None
    finally:
        server.stop()
