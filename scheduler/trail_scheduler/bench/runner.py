"""``trail bench``: every policy on the same work, one engine at a time, then a report.

Flow: pick prompts (seeded), profile their natural (sampled, seeded) output lengths on the served model
(cached), then for each engine (stock vLLM for ``fcfs``, one ``trail serve`` for the
TRAIL policies, switched live through its admin API) and each policy and rate, send
the same requests open-loop and record them. Engines are started here unless running
endpoints are given. Preemptions are vLLM's own counter (``vllm:num_preemptions_total``)
before and after each run; recomputed tokens as :func:`recomputed_tokens` says.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from trail_scheduler.api import SchedulerSettings
from trail_scheduler.assets import BUNDLED_MODEL_NAME
from trail_scheduler.bench import policies as P
from trail_scheduler.bench.loadgen import RequestRecord, run_load
from trail_scheduler.bench.report import (
    MIN_HEADROOM,
    compare,
    headroom,
    headroom_message,
    print_table,
    saturated_throughput,
    summarise,
    write_partial,
    write_report,
)
from trail_scheduler.bench.servers import (
    Server,
    check_loopback,
    metric_sum,
    start_stock_vllm,
    start_trail_serve,
)
from trail_scheduler.bench.simulate import ideal_ratio
from trail_scheduler.bench.workload import (
    BURST,
    DEFAULT_OUTPUT_CAP,
    MAX_PROMPT_TOKENS,
    BenchRequest,
    Load,
    WorkloadError,
    arrival_times,
    build_requests,
    chat_token_counter,
    describe_lengths,
    length_summary,
    load_prompts,
    parse_loads,
    profile_lengths,
    sample_mixed,
    sample_prompts,
    unprofiled,
    usable_prompts,
)
from trail_scheduler.errors import TrailError
from trail_scheduler.length_mix import LENGTH_MIXES
from trail_scheduler.predictors import SHIPPED_PROBE

PREEMPTIONS_METRIC = "vllm:num_preemptions_total"
PREFIX_HITS_METRIC = "vllm:prefix_cache_hits_total"  # new requests' prompt tokens found cached (resumed ones skipped)
RESUMED_METRIC = "trail_resumed_tokens_total"  # trail serve: resumed requests' tokens, by source


class BenchError(TrailError):
    """A ``trail bench`` flag or endpoint that cannot be used."""


@dataclass(frozen=True)
class Preset:
    requests: int
    loads: tuple[Load, ...]
    output_cap: int
    c_sweep: tuple[float, ...]
    sweep_rates: str  # "highest" or "all": the loads the c sweep runs at
    time_limit: float  # per run, seconds
    max_num_seqs: int
    policies: tuple[str, ...] = P.DEFAULT_POLICIES
    seeds: tuple[int, ...] = (0,)
    seeded_loads: tuple[str, ...] = ()  # labels of the loads run with every seed (the rest: the first seed)
    max_prompt_tokens: int = MAX_PROMPT_TOKENS
    length_mix: str = "natural"  # a key of LENGTH_MIXES


PRESETS = {
    # A smoke run: every policy once, tiny answers, the capacity measured on 2 batch slots;
    # minutes on the 2-core CPU machine.
    "quick": Preset(
        requests=6,
        loads=(Load(share=1.0), BURST),
        output_cap=32,
        c_sweep=(2.0,),
        sweep_rates="highest",
        time_limit=120,
        max_num_seqs=2,
        max_prompt_tokens=256,
    ),
    # The run recorded in docs/benchmarks.md: loads relative to the measured capacity, the
    # heaviest two with three seeds each; FCFS, the oracle and TRAIL; requests resampled to chat
    # traffic's length mix, as many as fit the whole preset in about an hour on 2 CPU cores.
    "full": Preset(
        requests=80,
        loads=(Load(share=0.7), Load(share=0.9), Load(share=1.2), BURST),
        output_cap=DEFAULT_OUTPUT_CAP,
        c_sweep=(),
        sweep_rates="highest",
        time_limit=1200,
        max_num_seqs=8,
        policies=("fcfs", "trail+", "trail"),
        seeds=(0, 1, 2),
        seeded_loads=("1.2x", "burst"),
        length_mix="chat",
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_const",
        dest="preset",
        const="quick",
        help="smoke preset: a few minutes on a 2-core CPU",
    )
    parser.add_argument(
        "--full",
        action="store_const",
        dest="preset",
        const="full",
        help="the preset recorded in docs/benchmarks.md (default)",
    )
    parser.add_argument(
        "--prompts",
        type=Path,
        help='JSONL of {"id", "prompt"} (default: the shipped predictors\' ShareGPT benchmark split)',
    )
    parser.add_argument(
        "--short-requests",
        action="store_true",
        help="only the prompts that are one short line, an instruction or a question (chat's common case)",
    )
    parser.add_argument(
        "--length-mix",
        choices=tuple(LENGTH_MIXES),
        help="answer lengths of the requests: 'chat' resamples the profiled pool to chat traffic's mix (median "
        "0.47x the cap, 21%% at it; profiles the whole pool once), 'natural' draws uniformly (default: the preset's)",
    )
    parser.add_argument("--requests", type=int, help="requests per run")
    arrivals = parser.add_mutually_exclusive_group()
    arrivals.add_argument(
        "--loads",
        help="comma-separated loads as shares of the engine's capacity (measured first, from stock vLLM's burst), "
        "e.g. 0.7,1.2,burst",
    )
    arrivals.add_argument("--rates", help="comma-separated arrival rates in requests/s; 'burst' sends all at once")
    parser.add_argument(
        "--capacity", type=float, help="the engine's capacity in output tokens/s, instead of measuring it"
    )
    parser.add_argument("--output-cap", type=int, help="cap on profiled output lengths (default 512)")
    parser.add_argument(
        "--policies",
        help=f"comma-separated, from: {', '.join(P.BASE_ENTRIES)} (default: {','.join(P.DEFAULT_POLICIES)}); "
        "a trail-engine entry takes settings after slashes, e.g. trail/preemptionMargin=128/refinementPrior=prompt",
    )
    parser.add_argument("--c-sweep", help="comma-separated values of c for extra TRAIL entries ('' for none)")
    parser.add_argument("--sweep-rates", choices=("highest", "all"), help="rates the c sweep runs at")
    parser.add_argument(
        "--probe", type=Path, help="probe file for TRAIL with embedding refinement (default: the shipped one, if any)"
    )
    parser.add_argument(
        "--max-wait-seconds",
        type=_max_wait,
        default=SchedulerSettings().max_wait_seconds,
        help="starvation bound for the TRAIL-engine policies, or 'off' (default: the shipped default)",
    )
    parser.add_argument(
        "--max-num-seqs", type=int, help="engine batch size (small: queueing comes early; preset's default)"
    )
    parser.add_argument(
        "--seeds", help="comma-separated; each fixes a prompt sample and its arrival times (default: the preset's)"
    )
    parser.add_argument(
        "--seeded-loads",
        help="loads run with every seed, e.g. 1.2,burst (the others run with the first seed; default: the preset's)",
    )
    parser.add_argument("--time-limit", type=float, help="seconds per run before open requests are cancelled")
    parser.add_argument("--output", type=Path, help="report folder (default: bench-results/<time>)")
    parser.add_argument("--trail-endpoint", help="a running trail serve (OpenAI port) to use instead of starting one")
    parser.add_argument("--admin-endpoint", help="its admin API (token from --admin-token-file or TRAIL_ADMIN_TOKEN)")
    parser.add_argument("--admin-token-file", type=Path)
    parser.add_argument(
        "--stock-endpoint", help="a running stock vLLM server to use for 'fcfs' instead of starting one"
    )


def _max_wait(text: str) -> float | None:
    if text == "off":
        return None
    try:
        return SchedulerSettings(max_wait_seconds=float(text)).max_wait_seconds
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected seconds > 0 or 'off': {error}") from None


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise BenchError(f"expected comma-separated numbers, got {text!r}") from None


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(dict.fromkeys(int(x) for x in text.split(",") if x.strip()))
    except ValueError:
        raise BenchError(f"expected comma-separated whole numbers for --seeds, got {text!r}") from None
    if not seeds:
        raise BenchError("no seeds given")
    return seeds


@dataclass
class BenchConfig:
    preset: str
    requests: int
    loads: tuple[Load, ...]
    output_cap: int
    entries: list[P.PolicyEntry]
    sweep_rates: str
    time_limit: float
    max_prompt_tokens: int
    seeds: tuple[int, ...]
    seeded_loads: frozenset[str]
    capacity: float | None
    max_num_seqs: int
    max_wait_seconds: float | None
    probe: Path | None
    prompts: Path | None
    output: Path
    notes: list[str] = field(default_factory=list)
    short_requests: bool = False
    length_mix: str = "natural"
    trail_endpoint: Server | None = None
    stock_endpoint: Server | None = None

    @property
    def relative(self) -> bool:
        return any(load.share is not None for load in self.loads)

    def runs_for(self, entry: P.PolicyEntry) -> list[tuple[Load, int]]:
        """(load, seed) pairs this entry runs, in order. The entries named in ``--policies``, switches
        included, run every load and seed, so each is compared with the others on the same work;
        the c sweep runs at the heaviest load and first seed only (or at every load with
        ``sweep_rates='all'``). Stock vLLM starts with the burst that measures the capacity when
        the loads need it."""
        loads = self.loads if not entry.sweep or self.sweep_rates == "all" else self.loads[-1:]
        runs = [
            (load, seed)
            for load in loads
            for seed in (self.seeds if not entry.sweep and load.label in self.seeded_loads else self.seeds[:1])
        ]
        if entry.name == "fcfs" and self.relative and self.capacity is None:
            runs.sort(key=lambda run: run != (BURST, self.seeds[0]))
        return runs

    def schedule(self) -> list[tuple[P.PolicyEntry, Load, int]]:
        """Every run, in the order it is made: one round per (load, seed), in which every entry
        that runs it takes its turn, the turns reversed every other round. So each ratio
        compares runs minutes apart, and a machine that drifts faster or slower over the hour
        favours no policy (docs/benchmarks.md measured stock vLLM's own time per token drift
        by 15% in 17 minutes). The first round is the first entry's first run (the capacity burst, if
        measured) in the given order: FCFS, then the oracle, then TRAIL."""
        rounds: dict[tuple[Load, int], list[P.PolicyEntry]] = {}
        for entry in self.entries:
            for run in self.runs_for(entry):
                rounds.setdefault(run, []).append(entry)
        return [
            (entry, load, seed)
            for turn, ((load, seed), entries) in enumerate(rounds.items())
            for entry in (entries if turn % 2 == 0 else entries[::-1])
        ]


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Validate everything before any engine starts; bad inputs are clear errors."""
    preset = PRESETS[args.preset or "full"]
    try:
        if args.rates:
            loads = parse_loads(args.rates, relative=False)
        else:
            loads = parse_loads(args.loads, relative=True) if args.loads else preset.loads
        relative = any(load.share is not None for load in loads)
        seeded = (
            {load.label for load in parse_loads(args.seeded_loads, relative)}
            if args.seeded_loads
            else set(preset.seeded_loads) & {load.label for load in loads}  # the preset's, where they run
        )
    except WorkloadError as error:
        raise BenchError(str(error)) from None
    unknown = seeded - {load.label for load in loads}
    if unknown:
        raise BenchError(f"--seeded-loads names loads that are not run: {', '.join(sorted(unknown))}")
    if args.capacity is not None and not (math.isfinite(args.capacity) and args.capacity > 0):
        raise BenchError(f"--capacity must be a positive number of output tokens/s, got {args.capacity}")
    if relative and args.capacity is None and BURST not in loads:
        loads = (*loads, BURST)  # the capacity is measured on stock vLLM's burst
    seeds = _seeds(args.seeds) if args.seeds else preset.seeds
    max_num_seqs = args.max_num_seqs or preset.max_num_seqs
    if max_num_seqs < 1:
        raise BenchError("--max-num-seqs must be at least 1")
    requests = args.requests or preset.requests
    output_cap = args.output_cap or preset.output_cap
    if requests < 1 or output_cap < 1:
        raise BenchError("--requests and --output-cap must be at least 1")
    if args.probe is None and SHIPPED_PROBE.is_file():  # the probe trained for the bundled model
        args.probe = SHIPPED_PROBE
    if args.probe is not None and not args.probe.is_file():
        raise BenchError(f"probe file {args.probe} not found")
    if args.prompts is not None and not args.prompts.is_file():
        raise BenchError(f"prompts file {args.prompts} not found")
    names = [n.strip() for n in args.policies.split(",") if n.strip()] if args.policies else list(preset.policies)
    c_sweep = _floats(args.c_sweep) if args.c_sweep is not None else preset.c_sweep
    entries, notes = P.resolve(names, c_sweep, have_probe=args.probe is not None, explicit=bool(args.policies))
    if relative and args.capacity is None:
        if not any(e.name == "fcfs" for e in entries):
            raise BenchError(
                "loads relative to capacity need the 'fcfs' policy (the capacity is measured on stock vLLM's burst) "
                "or --capacity TOKENS_PER_S"
            )
        if requests <= max_num_seqs:
            raise BenchError(
                f"measuring the capacity needs more requests than batch slots ({requests} ≤ --max-num-seqs "
                f"{max_num_seqs}): raise --requests or give --capacity"
            )
    trail_endpoint = stock_endpoint = None
    if args.trail_endpoint:
        if not args.admin_endpoint:
            raise BenchError("--trail-endpoint needs --admin-endpoint (policies are switched through it)")
        token = (
            args.admin_token_file.read_text().strip()
            if args.admin_token_file
            else os.environ.get("TRAIL_ADMIN_TOKEN", "").strip()
        )
        if not token:
            raise BenchError("the admin API needs a token: --admin-token-file or TRAIL_ADMIN_TOKEN")
        if len({e.probe for e in entries if e.engine == P.TRAIL}) > 1:
            raise BenchError(
                "one --trail-endpoint cannot serve both the probe-free policies and those with the probe: their "
                "runs alternate and a loaded probe cannot be unloaded; ask for one kind, or leave the engines "
                "to the bench"
            )
        trail_endpoint = Server(check_loopback(args.trail_endpoint), check_loopback(args.admin_endpoint), token)
    if args.stock_endpoint:
        stock_endpoint = Server(check_loopback(args.stock_endpoint))
    for server in (trail_endpoint, stock_endpoint):
        if server is not None:
            server.served_model()  # reachable and OpenAI-compatible, before any work
    output = args.output or Path("bench-results") / time.strftime("%Y%m%d-%H%M%S")
    return BenchConfig(
        preset=args.preset or "full",
        requests=requests,
        loads=loads,
        output_cap=output_cap,
        entries=entries,
        sweep_rates=args.sweep_rates or preset.sweep_rates,
        time_limit=args.time_limit or preset.time_limit,
        max_prompt_tokens=preset.max_prompt_tokens,
        seeds=seeds,
        seeded_loads=frozenset(seeded),
        capacity=args.capacity,
        max_num_seqs=max_num_seqs,
        max_wait_seconds=args.max_wait_seconds,
        probe=args.probe,
        prompts=args.prompts,
        short_requests=args.short_requests,
        length_mix=args.length_mix or preset.length_mix,
        output=output,
        notes=notes,
        trail_endpoint=trail_endpoint,
        stock_endpoint=stock_endpoint,
    )


# -- preemption cost ----------------------------------------------------------------------


def recomputed_tokens(before: dict, after: dict, records: list[RequestRecord], preemptions: float) -> float:
    """Tokens prefilled again after preemptions during a run.

    ``trail serve`` counts them exactly as each preempted request resumes (its
    ``trail_resumed_tokens_total``, split into what the prefix cache still held and what
    was recomputed). Stock vLLM counts neither (its prefix-cache metrics skip resumed
    requests): there ``prompt + half the output`` per preemption is assumed, with no cache
    hits, an upper bound (FCFS preempts only under KV pressure).
    """
    if RESUMED_METRIC in after:
        return metric_sum(after, RESUMED_METRIC, source="recomputed") - metric_sum(
            before, RESUMED_METRIC, source="recomputed"
        )
    done = [r for r in records if r.ok] or records
    if not preemptions or not done:
        return 0.0
    return preemptions * sum(r.prompt_tokens + r.output_tokens / 2 for r in done) / len(done)


# -- running ------------------------------------------------------------------------------


WARM_UP_TOKENS = 16


def _warm_up(server: Server, model: str, sample, max_num_seqs: int) -> dict:
    """One short burst, a full batch, before an engine's first measured run. Without it the two
    engines start unequal: stock vLLM's first run at a relative load follows the burst that
    measured the capacity, while ``trail serve``'s is its very first requests."""
    first = sample[:max_num_seqs]
    requests = [BenchRequest(f"warm-up-{i}", p.prompt, WARM_UP_TOKENS, 0.0) for i, p in enumerate(first)]
    records, seconds = asyncio.run(run_load(server.base, model, requests, time_limit=300))
    failed = [record.error for record in records if not record.ok]
    if failed:
        raise BenchError(f"the warm-up requests to {server.base} failed: {failed[0]}")
    return {"requests": len(requests), "seconds": round(seconds, 2)}


def _empty_prefix_cache(server: Server, notes: list[str]) -> bool | None:
    """Before each measured run: otherwise a policy that runs a seed after another on the same
    engine finds its prompts already prefilled, and stock vLLM (one policy per seed) does not."""
    cold = server.reset_prefix_cache()
    if cold is not True and not any(note.startswith(server.base) for note in notes):
        why = "no /reset_prefix_cache: start vLLM with VLLM_SERVER_DEV_MODE=1" if cold is None else "blocks still held"
        notes.append(f"{server.base}: runs may reuse prompts earlier runs prefilled (prefix cache not emptied: {why})")
    return cold


def _run_one(
    server: Server,
    model: str,
    entry: P.PolicyEntry,
    rate: float | None,
    requests,
    run_index: int,
    time_limit: float,
    on_done,
) -> tuple[list[RequestRecord], float, float, float, dict]:
    """One policy at one rate: records, duration, preemptions, recomputed tokens, and the
    engine's other counts for the run's row."""
    # Unique request ids name each run's requests in the engine's log and stats.
    ids = {r.id: f"bench{run_index}x{i}" for i, r in enumerate(requests)}

    def extra(request) -> dict:
        body: dict = {"request_id": ids[request.id]}
        if entry.oracle:
            body["vllm_xargs"] = {"trail_oracle_length": request.output_tokens}
        return body

    before = server.metrics()
    records, duration = asyncio.run(run_load(server.base, model, requests, time_limit, extra, on_done))
    time.sleep(1.5)  # vLLM's stat logger and the trail_ metrics' poll publish a moment after the last step
    after = server.metrics()
    preemptions = metric_sum(after, PREEMPTIONS_METRIC) - metric_sum(before, PREEMPTIONS_METRIC)
    counts = {
        "prefix_cache_hit_tokens": metric_sum(after, PREFIX_HITS_METRIC) - metric_sum(before, PREFIX_HITS_METRIC),
        "resumed_from_prefix_cache_tokens": metric_sum(after, RESUMED_METRIC, source="prefix_cache")
        - metric_sum(before, RESUMED_METRIC, source="prefix_cache"),
    }
    recomputed = recomputed_tokens(before, after, records, preemptions)
    return records, duration, preemptions, recomputed, counts


def _natural_lengths(config: BenchConfig, prompts, logs: Path, engine_args, progress) -> dict[str, int]:
    """Each prompt's natural length, profiled on ``trail serve`` (started for it unless every
    length is cached). Not on stock vLLM: version 0.32 on CPU dies on a seeded request whose
    prompt is prefilled in chunks, and the profile seeds every request; trail serve's worker
    keeps that from happening."""
    with ExitStack() as scope:
        server = config.trail_endpoint
        if server is None:
            if not unprofiled(BUNDLED_MODEL_NAME, prompts, config.output_cap):
                return profile_lengths("", BUNDLED_MODEL_NAME, prompts, config.output_cap)  # all cached
            starting = progress.add_task("starting trail serve to profile output lengths", total=None)
            server = start_trail_serve(logs, "--probe", "none", *engine_args)
            scope.callback(server.stop)
            progress.remove_task(starting)
        task = progress.add_task("profiling output lengths", total=len(prompts))
        lengths = profile_lengths(
            server.base,
            server.served_model(),
            prompts,
            config.output_cap,
            progress=lambda: progress.advance(task),
        )
        progress.remove_task(task)
        return lengths


def _ideal_ratios(config: BenchConfig, samples, lengths: dict[str, int], console) -> dict[str, float]:
    """Print and return what shortest-remaining-first could gain over FCFS at each load on these
    requests (:mod:`~trail_scheduler.bench.simulate`): known before any run, it says which
    comparisons can show anything. Absolute rates need the capacity, so only relative loads
    and the burst are simulated."""
    ratios = {}
    for load in config.loads:
        if load.rate is not None:
            continue
        for seed in config.seeds if load.label in config.seeded_loads else config.seeds[:1]:
            sample = [lengths[p.id] for p in samples[seed]]
            rate = load.requests_per_second(1.0, sum(sample) / len(sample))  # capacity 1: the fluid model's unit
            where = load.label if len(config.seeds) == 1 else f"{load.label}, seed {seed}"
            ratios[where] = ideal_ratio(sample, arrival_times(len(sample), rate, seed), config.max_num_seqs)
    if ratios:
        shown = ", ".join(f"{where} {ratio:.2f}x" for where, ratio in ratios.items())
        console.print(
            f"ideal headroom (simulated shortest-remaining-first over FCFS, free preemption): {shown}"
            + (
                "; where it is near 1.0x, no order can gain much on these requests (few queue: more requests "
                "per run, a higher load, or answers that vary more)"
                if max(ratios.values()) > 1 - MIN_HEADROOM
                else ""
            )
        )
    return ratios


class _Engines:
    """The engines the runs need: each started (or reached at its endpoint) once, warmed up
    before its first measured run, and kept up until the bench ends, so that runs on different
    engines can alternate (an idle engine takes no CPU). Probe-free TRAIL entries and those with
    the probe run on two ``trail serve`` engines: a loaded probe cannot be unloaded."""

    def __init__(self, config: BenchConfig, logs: Path, engine_args, warm_up_sample, warm_ups: dict, progress, stack):
        self.config, self.logs, self.engine_args = config, logs, engine_args
        self.warm_up_sample, self.warm_ups = warm_up_sample, warm_ups
        self.progress, self.stack = progress, stack
        self.served: dict[tuple[str, bool], tuple[Server, str]] = {}

    def serving(self, entry: P.PolicyEntry) -> tuple[Server, str]:
        """The server for ``entry`` and the model name it serves."""
        key = (entry.engine, entry.engine == P.TRAIL and entry.probe)
        if key not in self.served:
            server = self._reach(*key)
            model = server.served_model()
            name = key[0] + (" with the probe" if key[1] else "")
            self.warm_ups[name] = _warm_up(server, model, self.warm_up_sample, self.config.max_num_seqs)
            self.served[key] = (server, model)
        return self.served[key]

    def _reach(self, engine: str, probe: bool) -> Server:
        config = self.config
        given = config.stock_endpoint if engine == P.STOCK else config.trail_endpoint
        if given is not None:
            if engine == P.TRAIL:
                current = given.configure(policy="fcfs")
                if probe and current.probe is None:
                    given.load_probe(config.probe)
                elif not probe and current.probe is not None:
                    raise BenchError(
                        "the trail endpoint already has a probe loaded; prompt-only policies "
                        "need an engine without one (start trail serve without --probe)"
                    )
            return given
        what = "stock vLLM" if engine == P.STOCK else "trail serve" + (" with the probe" if probe else "")
        starting = self.progress.add_task(f"starting {what}", total=None)
        if engine == P.STOCK:
            server = start_stock_vllm(self.logs, *self.engine_args)
        else:
            server = start_trail_serve(self.logs, "--probe", str(config.probe) if probe else "none", *self.engine_args)
        self.stack.callback(server.stop)
        self.progress.remove_task(starting)
        return server


def run_bench(config: BenchConfig) -> dict:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from trail_scheduler.assets import prepare_bundled_model

    console = Console(stderr=True)
    config.output.mkdir(parents=True, exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix="trail-bench-logs-", dir=config.output))
    model_path = prepare_bundled_model()
    pool = load_prompts(config.prompts, config.short_requests)
    count_tokens = chat_token_counter(model_path)
    mix = LENGTH_MIXES[config.length_mix]
    if mix is None:
        samples = {
            seed: sample_prompts(pool, config.requests, seed, config.max_prompt_tokens, count_tokens=count_tokens)
            for seed in config.seeds
        }
        to_profile = list({p.id: p for sample in samples.values() for p in sample}.values())
    else:  # drawn by length: the whole pool is profiled first (once; the lengths are cached)
        to_profile = usable_prompts(pool, config.max_prompt_tokens, count_tokens)
    engine_args = ("--max-num-seqs", str(config.max_num_seqs))
    runs = config.schedule()
    capacity = config.capacity
    report: dict = {
        "title": f"trail bench ({config.preset}): {config.requests} requests per run, cap {config.output_cap}, "
        f"max-num-seqs {config.max_num_seqs}, seeds {','.join(map(str, config.seeds))}",
        "config": {
            "preset": config.preset,
            "requests": config.requests,
            "loads": [load.label for load in config.loads],
            "output_cap": config.output_cap,
            "seeds": list(config.seeds),
            "seeded_loads": sorted(config.seeded_loads),
            "max_num_seqs": config.max_num_seqs,
            "max_wait_seconds": config.max_wait_seconds,
            "probe": str(config.probe) if config.probe else None,
            "prompts": str(config.prompts) if config.prompts else "sharegpt-bench-pool",
            "short_requests": config.short_requests,
            "length_mix": config.length_mix,
            "time_limit_s": config.time_limit,
            "policies": {e.name: e.description for e in config.entries},
        },
        "notes": list(config.notes),
        "warm_up": {},  # per engine: the short burst sent before its first measured run
        "summary": [],
        "requests": [],
    }
    with (
        ExitStack() as stack,
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress,
    ):
        lengths = _natural_lengths(config, to_profile, logs, engine_args, progress)
        if mix is not None:
            report["lengths_pool"] = length_summary(list(lengths.values()), config.output_cap)
            progress.console.print(f"the pool's {describe_lengths(report['lengths_pool'])}")
            progress.console.print(f"resampled to the {mix.name} length mix (by profiled length only)")
            samples = {
                seed: sample_mixed(to_profile, lengths, config.requests, seed, config.output_cap, mix)
                for seed in config.seeds
            }
        first = [lengths[p.id] for p in samples[config.seeds[0]]]
        report["lengths"] = length_summary(first, config.output_cap)
        progress.console.print(describe_lengths(report["lengths"]))
        if len(config.seeds) > 1:
            sent = {p.id for sample in samples.values() for p in sample}
            report["lengths_all_seeds"] = length_summary([lengths[i] for i in sent], config.output_cap)
        report["ideal_ratio"] = _ideal_ratios(config, samples, lengths, progress.console)
        overall = progress.add_task("runs", total=len(runs))
        engines = _Engines(config, logs, engine_args, samples[config.seeds[0]], report["warm_up"], progress, stack)
        for run_index, (entry, load, seed) in enumerate(runs):
            server, model = engines.serving(entry)
            if entry.engine == P.TRAIL:
                server.configure(**entry.settings(config.max_wait_seconds))
            sample = samples[seed]
            rate = load.requests_per_second(capacity, sum(lengths[p.id] for p in sample) / len(sample))
            requests = build_requests(sample, lengths, rate, seed)
            where = load.label if len(config.seeds) == 1 else f"{load.label}, seed {seed}"
            task = progress.add_task(f"{entry.name} @ {where}", total=len(requests))
            cold = _empty_prefix_cache(server, report["notes"])
            records, duration, preemptions, recomputed, counts = _run_one(
                server,
                model,
                entry,
                rate,
                requests,
                run_index,
                config.time_limit,
                on_done=lambda record, task=task: progress.advance(task),
            )
            progress.remove_task(task)
            progress.advance(overall)
            row = summarise(entry.name, rate, records, duration, preemptions, recomputed, load.label, seed)
            # Other work on the machine skews timings: keep the evidence with the numbers.
            row["load_avg_1m"] = os.getloadavg()[0]
            row.update(counts, prefix_cache_reset=cold)
            progress.console.print(
                f"{entry.name} @ {where}: mean latency "
                f"{row['mean_latency_s']:.2f} s, TTFT {row['mean_ttft_s']:.2f} s, "
                f"{row['output_throughput_tok_s']:.1f} tok/s"
            )
            report["summary"].append(row)
            report["requests"] += [{"policy": entry.name, "rate": load.label, "seed": seed, **vars(r)} for r in records]
            if row["failed"]:
                errors = {r.error for r in records if r.error}
                report["notes"].append(
                    f"{entry.name} @ {where}: {row['failed']} requests failed: {'; '.join(sorted(errors))[:300]}"
                )
            if capacity is None and entry.name == "fcfs" and load == BURST and config.relative:
                capacity = saturated_throughput(records, config.max_num_seqs)
                if capacity is None:
                    raise BenchError(
                        "the burst never filled the batch slots (failed requests?): cannot measure capacity"
                    )
                report["capacity"] = {
                    "output_tok_s": capacity,
                    "measured_on": f"fcfs @ burst, seed {seed}",
                    "batch_slots": config.max_num_seqs,
                }
                progress.console.print(
                    f"capacity: {capacity:.1f} output tokens/s while all {config.max_num_seqs} batch slots "
                    "were busy (stock vLLM, FCFS, the burst); loads are shares of it"
                )
            ratio = headroom(report["summary"], load.label, seed)  # once both FCFS and the oracle ran
            if ratio is not None and where not in report.get("headroom", {}):
                line, warn = headroom_message(ratio, where)
                progress.console.print(f"[yellow]{line}[/yellow]" if warn else line)
                report.setdefault("headroom", {})[where] = ratio
                if warn:
                    report["notes"].append(line)
            write_partial(config.output, report)  # a long run that dies keeps what it measured
    if config.capacity is not None:
        report["capacity"] = {"output_tok_s": config.capacity, "measured_on": "given (--capacity)"}
    report["comparison"] = compare(report["summary"])
    report["files"] = {k: str(v) for k, v in write_report(config.output, report).items()}
    print_table(report, Console(width=max(Console().width, 150)))
    console.print(f"report: {config.output}")
    return report


def main(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    report = run_bench(config)
    return 1 if any(row["completed"] == 0 for row in report["summary"]) else 0
