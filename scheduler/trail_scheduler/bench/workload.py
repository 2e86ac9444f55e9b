"""Benchmark workloads: prompts, their profiled answers, and arrival times.

Every policy must serve exactly the same work, so (as the reference's benchmark does)
each prompt is answered once on the served model, its length and text cached, and every
later request is sent with ``ignore_eos`` and ``max_tokens`` equal to that length, under
the *same decoding* that produced it: greedy (the default, the TRAIL paper's protocol), or
seeded sampling with the seed fixed per prompt. The served text is then the profiled text,
so a probe reading it is scored against the length of the answer it reads (the loadgen
checks this per request). A seed fixes the sample of prompts, their order and the arrival
times.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from trail_contract.errors import TrailError
from trail_scheduler.assets import (
    cache_dir,
    is_short_request,
    read_prompt_file,
    sharegpt_first_turns,
    unique_prompts,
)
from trail_scheduler.length_mix import LengthMix
from trail_scheduler.predictors import SHIPPED_BENCHMARK_SPLIT

DEFAULT_OUTPUT_CAP = 512
MAX_MODEL_LEN = 2048  # trail serve's for the bundled model
MAX_PROMPT_TOKENS = 1024  # prompt + answer must fit the model length


class WorkloadError(TrailError):
    """A workload that cannot be built (no prompts, bad file, bad rate)."""


@dataclass(frozen=True)
class Prompt:
    id: str
    prompt: str


@dataclass(frozen=True)
class Decoding:
    """How every request of a run is decoded, at profiling and at serving alike.

    ``temperature`` 0 is greedy: the answer is a function of the prompt. Otherwise each
    request carries a seed derived from its prompt id, so its answer repeats exactly."""

    name: str
    temperature: float
    top_p: float

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def body(self, prompt_id: str) -> dict:
        """The sampling fields of a chat request for this prompt."""
        if self.greedy:
            return {"temperature": 0}
        return {"temperature": self.temperature, "top_p": self.top_p, "seed": prompt_seed(prompt_id)}

    def key(self) -> str:
        return "greedy" if self.greedy else f"temperature={self.temperature:g},top_p={self.top_p:g},seeded"

    def trained_on(self, sampling: dict) -> bool:
        """Whether a predictor whose training answers were drawn with ``sampling`` (its
        metadata's ``temperature``/``top_p``) saw answers decoded this way."""
        temperature = float(sampling.get("temperature", math.nan))
        if self.greedy or temperature == 0:
            return self.greedy and temperature == 0
        return temperature == self.temperature and float(sampling.get("top_p", 1.0)) == self.top_p


DECODINGS = {
    "greedy": Decoding("greedy", 0.0, 1.0),
    "sampled": Decoding("sampled", 0.7, 0.9),  # as chat clients sample
}
GREEDY = DECODINGS["greedy"]


def prompt_seed(prompt_id: str) -> int:
    return int(hashlib.sha256(prompt_id.encode()).hexdigest()[:8], 16)


@dataclass(frozen=True)
class BenchRequest:
    """One request of a run: what to send and when (seconds after the run starts)."""

    id: str
    prompt: str
    output_tokens: int  # the profiled natural length: max_tokens, with ignore_eos
    arrival: float
    text_sha256: str | None = None  # the profiled answer's text, to check the served one against
    prompt_tokens: int = 0  # as the server counts them (chat template included)


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
    prompts: Sequence[Prompt],
    answers: dict[str, Answer],
    rate: float | None,
    seed: int,
    prompt_tokens: dict[str, int] | None = None,
) -> list[BenchRequest]:
    times = arrival_times(len(prompts), rate, seed)
    return [
        BenchRequest(
            p.id, p.prompt, answers[p.id].tokens, t, answers[p.id].text_sha256, (prompt_tokens or {}).get(p.id, 0)
        )
        for p, t in zip(prompts, times)
    ]


# -- profiled answers --------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """A prompt's profiled answer: its length in tokens and a hash of its text."""

    tokens: int
    text_sha256: str | None = None


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _profile_key(model: str, cap: int, prompt: Prompt, decoding: Decoding) -> str:
    digest = hashlib.sha256(prompt.prompt.encode()).hexdigest()[:16]
    return f"{model}|{cap}|{prompt.id}|{digest}|{decoding.key()}"


def length_cache_path() -> Path:
    return cache_dir() / "bench" / "answers.json"


def _read_cache(cache: Path) -> dict[str, dict]:
    return json.loads(cache.read_text()) if cache.exists() else {}


async def _profile_one(
    client: httpx.AsyncClient, base: str, model: str, prompt: Prompt, cap: int, decoding: Decoding
) -> dict:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt.prompt}],
        "max_tokens": cap,
        **decoding.body(prompt.id),
    }
    reply = await client.post(f"{base}/v1/chat/completions", json=body)
    if reply.status_code != 200:
        raise WorkloadError(f"profiling prompt {prompt.id} failed: {reply.status_code} {reply.text[:300]}")
    result = reply.json()
    text = result["choices"][0]["message"].get("content") or ""
    return {"tokens": int(result["usage"]["completion_tokens"]), "text_sha256": text_sha256(text)}


def unprofiled(
    model: str, prompts: Sequence[Prompt], cap: int, decoding: Decoding, cache: Path | None = None
) -> list[Prompt]:
    """The prompts whose answer under ``decoding`` is not cached yet (profiling them needs an engine)."""
    known = _read_cache(cache or length_cache_path())
    return [p for p in prompts if _profile_key(model, cap, p, decoding) not in known]


def profile_answers(
    base: str,
    model: str,
    prompts: Sequence[Prompt],
    cap: int,
    decoding: Decoding,
    cache: Path | None = None,
    concurrency: int = 16,
    progress=None,
) -> dict[str, Answer]:
    """Each prompt's answer on the served model under ``decoding``, capped; cached on disk.

    The cache key holds the model name, the cap, a hash of the prompt and the decoding, so
    a different model, cap, prompt text or decoding is profiled afresh: answers are never
    reused across decodings.
    """
    cache = cache or length_cache_path()
    known = _read_cache(cache)
    missing = [p for p in prompts if _profile_key(model, cap, p, decoding) not in known]

    async def run() -> None:
        limit = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(timeout=httpx.Timeout(600.0)) as client:

            async def one(prompt: Prompt) -> None:
                async with limit:
                    answer = await _profile_one(client, base, model, prompt, cap, decoding)
                    known[_profile_key(model, cap, prompt, decoding)] = answer
                if progress is not None:
                    progress()

            await asyncio.gather(*(one(p) for p in missing))

    if missing:
        asyncio.run(run())
        cache.parent.mkdir(parents=True, exist_ok=True)
        # Another bench may have written meanwhile: keep its answers, and never share a temp file.
        merged = {**_read_cache(cache), **known}
        with tempfile.NamedTemporaryFile("w", dir=cache.parent, suffix=".partial", delete=False) as partial:
            partial.write(json.dumps(merged, indent=0, sort_keys=True))
        Path(partial.name).replace(cache)
    answers = {}
    for p in prompts:
        entry = known[_profile_key(model, cap, p, decoding)]
        # An answer of zero tokens cannot be forced with ignore_eos; one token is the floor.
        answers[p.id] = Answer(max(1, entry["tokens"]), entry["text_sha256"] if entry["tokens"] >= 1 else None)
    return answers


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
