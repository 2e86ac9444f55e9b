"""Benchmark workloads: prompts, their profiled output lengths, and arrival times.

Every policy must serve exactly the same work, so (as the reference's benchmark does)
each prompt's natural output length is measured once on the served model, cached, and
every later request is sent with ``ignore_eos`` and ``max_tokens`` equal to that length.
Lengths are measured as chat clients sample (temperature 0.7, top-p 0.9, the sampling the
predictors are trained with), with a seed fixed per prompt so the measurement repeats; the
bundled model's greedy answers loop to the cap on most prompts, which no chat user sees.
A seed fixes the sample of prompts, their order and the arrival times.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from trail_scheduler.assets import cache_dir, read_prompt_file, sharegpt_first_turns, unique_prompts
from trail_scheduler.errors import TrailError
from trail_scheduler.length_mix import LengthMix
from trail_scheduler.predictors import SHIPPED_BENCHMARK_SPLIT

DEFAULT_OUTPUT_CAP = 512
MAX_PROMPT_TOKENS = 1024  # prompt + answer must fit max-model-len 2048


# Requests of the kind chat users send most: one line, short, an instruction or a question.
# Selected by the request's form only, never by its answer, so the workload's answer lengths
# are what the model gives such requests (ShareGPT first turns are often pasted documents
# and multi-part tasks, on which the bundled model runs to the cap on about half).
SHORT_REQUEST_CHARS = 200
_SHORT_REQUEST_START = re.compile(
    r"(?:write|give|list|explain|summari[sz]e|describe|create|generate|suggest|tell|name|translate|rewrite|compose|"
    r"provide|make|draft|define|compare|outline|brainstorm|what|what's|how|why|who|can you|could you|please)\b",
    re.IGNORECASE,
)


def is_short_request(text: str) -> bool:
    text = text.strip()
    return len(text) <= SHORT_REQUEST_CHARS and "\n" not in text and bool(_SHORT_REQUEST_START.match(text))


class WorkloadError(TrailError):
    """A workload that cannot be built (no prompts, bad file, bad rate)."""


@dataclass(frozen=True)
class Prompt:
    id: str
    prompt: str


@dataclass(frozen=True)
class BenchRequest:
    """One request of a run: what to send and when (seconds after the run starts)."""

    id: str
    prompt: str
    output_tokens: int  # the profiled natural length: max_tokens, with ignore_eos
    arrival: float


def load_prompts(path: Path | None = None, short_requests: bool = False) -> list[Prompt]:
    """Prompts from a JSONL file (see :func:`~trail_scheduler.assets.read_prompt_file`), or the
    shipped ShareGPT benchmark split; ids must be unique (they key the profiled lengths).
    ``short_requests`` keeps those of :func:`is_short_request`'s form."""
    if path is None:
        prompts, source = benchmark_split_prompts(), f"the ShareGPT benchmark split ({SHIPPED_BENCHMARK_SPLIT.name})"
    else:
        prompts, source = [Prompt(*pair) for pair in read_prompt_file(path)], str(path)
    if short_requests:
        prompts, source = [p for p in prompts if is_short_request(p.prompt)], f"the short requests of {source}"
    if not prompts:
        raise WorkloadError(f"no prompts in {source}")
    if len({p.id for p in prompts}) != len(prompts):
        raise WorkloadError(f"prompt ids in {source} are not unique")
    return prompts


def benchmark_split_prompts() -> list[Prompt]:
    """The shipped predictors' benchmark split, in the bundled file's order.

    Read as ``trail probe collect`` read the pool, so the prompts are exactly those of
    the collection's ``benchmark.jsonl``.
    """
    wanted = set(json.loads(SHIPPED_BENCHMARK_SPLIT.read_text())["ids"])
    return [Prompt(i, text) for i, text in unique_prompts(sharegpt_first_turns()) if i in wanted]


def usable_prompts(prompts: Sequence[Prompt], max_prompt_tokens: int, count_tokens) -> list[Prompt]:
    """The prompts short enough that prompt + answer fit the model."""
    return [p for p in prompts if count_tokens(p.prompt) <= max_prompt_tokens]


def sample_prompts(
    prompts: Sequence[Prompt], count: int, seed: int, max_prompt_tokens: int = MAX_PROMPT_TOKENS, count_tokens=None
) -> list[Prompt]:
    """``count`` prompts drawn by ``seed``, skipping prompts too long for the model."""
    if count < 1:
        raise WorkloadError(f"need at least one request, got {count}")
    order = list(prompts)
    random.Random(seed).shuffle(order)
    chosen = (order if count_tokens is None else usable_prompts(order, max_prompt_tokens, count_tokens))[:count]
    if len(chosen) < count:
        raise WorkloadError(f"only {len(chosen)} usable prompts (≤ {max_prompt_tokens} tokens), {count} requested")
    return chosen


def sample_mixed(
    prompts: Sequence[Prompt], lengths: dict[str, int], count: int, seed: int, cap: int, mix: LengthMix
) -> list[Prompt]:
    """``count`` prompts whose profiled lengths follow ``mix`` (:meth:`LengthMix.draw`)."""
    try:
        return mix.draw(prompts, lambda p: lengths[p.id], count, cap, seed)
    except ValueError as error:
        raise WorkloadError(f"{error} (--requests, --prompts)") from None


def chat_token_counter(model_path: Path):
    """Prompt length in tokens as the server sees it (chat template included)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)

    def count(text: str) -> int:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
        return len(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)

    return count


@dataclass(frozen=True)
class Load:
    """How requests arrive: all at once (a burst), at ``rate`` requests/s, or at ``share``
    times the engine's capacity (measured on the same workload, see ``report.saturated_throughput``)."""

    rate: float | None = None
    share: float | None = None

    def __post_init__(self) -> None:
        for name, value in (("arrival rate", self.rate), ("share of capacity", self.share)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise WorkloadError(f"{name} must be a positive number, got {value:g}")
        if self.rate is not None and self.share is not None:
            raise WorkloadError("a load is a rate or a share of capacity, not both")

    @property
    def burst(self) -> bool:
        return self.rate is None and self.share is None

    @property
    def label(self) -> str:
        if self.burst:
            return "burst"
        return f"{self.share:g}x" if self.share is not None else f"{self.rate:g}"

    @property
    def order(self) -> float:
        """Lightest first; a burst is the heaviest."""
        return math.inf if self.burst else (self.share if self.share is not None else self.rate)

    def requests_per_second(self, capacity_tok_s: float | None, mean_output_tokens: float) -> float | None:
        """The Poisson rate (None: a burst). A share of capacity offers ``share × capacity``
        output tokens/s: requests/s = that over the mean answer length of the requests sent."""
        if self.share is None:
            return self.rate
        if capacity_tok_s is None:
            raise WorkloadError(f"load {self.label} needs the engine's capacity, which was not measured")
        return self.share * capacity_tok_s / mean_output_tokens


BURST = Load()


def parse_loads(text: str, relative: bool) -> tuple[Load, ...]:
    """``"0.7,1.2,burst"``: shares of capacity (``relative``) or requests/s; lightest first."""
    loads = []
    for item in (x.strip() for x in text.split(",")):
        if item == "burst":
            loads.append(BURST)
        elif item:
            try:
                value = float(item.removesuffix("x") if relative else item)
            except ValueError:
                raise WorkloadError(f"expected comma-separated numbers or 'burst', got {item!r}") from None
            loads.append(Load(share=value) if relative else Load(rate=value))
    if not loads:
        raise WorkloadError("no loads given")
    return tuple(sorted(dict.fromkeys(loads), key=lambda load: load.order))


def arrival_times(count: int, rate: float | None, seed: int) -> list[float]:
    """Poisson arrivals at ``rate`` requests/s (exponential gaps), or all at 0 (burst: None)."""
    if rate is None:
        return [0.0] * count
    if not (math.isfinite(rate) and rate > 0):
        raise WorkloadError(f"arrival rate must be a positive number of requests/s, got {rate}")
    rng = random.Random(seed)
    times, now = [], 0.0
    for _ in range(count):
        times.append(now)
        now += rng.expovariate(rate)
    return times


def build_requests(
    prompts: Sequence[Prompt], lengths: dict[str, int], rate: float | None, seed: int
) -> list[BenchRequest]:
    times = arrival_times(len(prompts), rate, seed)
    return [BenchRequest(p.id, p.prompt, lengths[p.id], t) for p, t in zip(prompts, times)]


# -- natural output lengths -------------------------------------------------------------


PROFILE_SAMPLING = {"temperature": 0.7, "top_p": 0.9}


def _profile_key(model: str, cap: int, prompt: Prompt) -> str:
    digest = hashlib.sha256(prompt.prompt.encode()).hexdigest()[:16]
    sampling = ",".join(f"{k}={v}" for k, v in PROFILE_SAMPLING.items())
    return f"{model}|{cap}|{prompt.id}|{digest}|{sampling}"


def _prompt_seed(prompt: Prompt) -> int:
    return int(hashlib.sha256(prompt.id.encode()).hexdigest()[:8], 16)


def _cached_caps(known: dict[str, int]) -> set[int]:
    return {int(key.split("|")[1]) for key in known}


def length_cache_path() -> Path:
    return cache_dir() / "bench" / "lengths.json"


async def _natural_length(client: httpx.AsyncClient, base: str, model: str, prompt: Prompt, cap: int) -> int:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt.prompt}],
        "max_tokens": cap,
        **PROFILE_SAMPLING,
        "seed": _prompt_seed(prompt),
    }
    reply = await client.post(f"{base}/v1/chat/completions", json=body)
    if reply.status_code != 200:
        raise WorkloadError(f"profiling prompt {prompt.id} failed: {reply.status_code} {reply.text[:300]}")
    return int(reply.json()["usage"]["completion_tokens"])


def _known_lengths(model: str, prompts: Sequence[Prompt], cap: int, cache: Path) -> dict[str, int]:
    """The cache, with answers under a larger cap filled in for this cap."""
    known: dict[str, int] = json.loads(cache.read_text()) if cache.exists() else {}
    # Seeded sampling is deterministic and causal: the answer under a smaller cap is a
    # prefix of the answer under a larger one, so a larger-cap profile gives min(L, cap).
    for prompt in prompts:
        key = _profile_key(model, cap, prompt)
        if key not in known:
            larger = [
                known[k]
                for k in (_profile_key(model, c, prompt) for c in _cached_caps(known))
                if k in known and int(k.split("|")[1]) >= cap
            ]
            if larger:
                known[key] = min(larger[0], cap)
    return known


def unprofiled(model: str, prompts: Sequence[Prompt], cap: int, cache: Path | None = None) -> list[Prompt]:
    """The prompts whose natural length is not cached yet (profiling them needs an engine)."""
    known = _known_lengths(model, prompts, cap, cache or length_cache_path())
    return [p for p in prompts if _profile_key(model, cap, p) not in known]


def profile_lengths(
    base: str,
    model: str,
    prompts: Sequence[Prompt],
    cap: int,
    cache: Path | None = None,
    concurrency: int = 16,
    progress=None,
) -> dict[str, int]:
    """Natural (sampled, seeded) output length of each prompt on the served model, capped; cached on disk.

    The cache key holds the model name, the cap and a hash of the prompt, so a
    different model, cap or prompt text is profiled afresh.
    """
    cache = cache or length_cache_path()
    known = _known_lengths(model, prompts, cap, cache)
    missing = [p for p in prompts if _profile_key(model, cap, p) not in known]

    async def run() -> None:
        limit = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(timeout=httpx.Timeout(600.0)) as client:

            async def one(prompt: Prompt) -> None:
                async with limit:
                    known[_profile_key(model, cap, prompt)] = await _natural_length(client, base, model, prompt, cap)
                if progress is not None:
                    progress()

            await asyncio.gather(*(one(p) for p in missing))

    if missing:
        asyncio.run(run())
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(".partial")
        partial.write_text(json.dumps(known, indent=0, sort_keys=True))
        partial.replace(cache)
    # An answer of zero tokens cannot be forced with ignore_eos; one token is the floor.
    return {p.id: max(1, known[_profile_key(model, cap, p)]) for p in prompts}


def length_summary(lengths: Sequence[int], cap: int) -> dict:
    """The distribution a length-aware scheduler has to work with (quantiles as in the run summaries)."""
    import numpy as np  # here: `trail operator run` builds this command's parser without the engine stack

    values = np.asarray(lengths, dtype=np.float64)
    p25, median, p75 = np.percentile(values, [25, 50, 75]).tolist()
    return {
        "count": len(values),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": int(values.min()),
        "p25": p25,
        "median": median,
        "p75": p75,
        "max": int(values.max()),
        "at_cap": int((values >= cap).sum()),
        "cap": cap,
    }


def describe_lengths(summary: dict) -> str:
    """One line on the answer lengths every policy will serve."""
    return (
        f"answer lengths ({summary['count']} requests, cap {summary['cap']}): mean {summary['mean']:.0f}, "
        f"min {summary['min']}, p25 {summary['p25']:.0f}, median {summary['median']:.0f}, p75 {summary['p75']:.0f}, "
        f"max {summary['max']}; {summary['at_cap']} at the cap"
    )
