"""``trail bench``'s configuration: presets, flags, and their validation before any engine starts."""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from trail_contract.errors import TrailError
from trail_contract.probe_format import ProbeFormatError, read_header
from trail_contract.settings import SchedulerSettings
from trail_scheduler.bench import policies as P
from trail_scheduler.bench.servers import Server, check_loopback
from trail_scheduler.bench.workload import (
    BURST,
    DECODINGS,
    DEFAULT_OUTPUT_CAP,
    MAX_MODEL_LEN,
    MAX_PROMPT_TOKENS,
    Decoding,
    Load,
    WorkloadError,
    parse_loads,
)
from trail_scheduler.length_mix import LENGTH_MIXES
from trail_scheduler.predictors import SHIPPED_PROBE, SHIPPED_PROMPT_PREDICTOR


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
    # The preset docs/benchmarks.md describes: the prompts at their natural mix, loads relative
    # to the measured capacity, the heaviest two with three seeds each; what users would pick
    # instead of TRAIL (stock FCFS, SJF on the prompt predictor, shortest prompt first, TRAIL
    # without preemption) beside TRAIL at its defaults and the oracle.
    "full": Preset(
        requests=240,
        loads=(Load(share=0.7), Load(share=1.0), Load(share=1.5), BURST),
        output_cap=DEFAULT_OUTPUT_CAP,
        c_sweep=(),
        sweep_rates="highest",
        time_limit=1800,
        max_num_seqs=8,
        policies=("fcfs", "sjf", "spf", "trail/c=0", "trail", "trail+"),
        seeds=(0, 1, 2),
        seeded_loads=("1.5x", "burst"),
    ),
}


REVERSIBLE = ("probe", "both")  # --reverse-bins: which predictors are served reversed


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
        help="the full preset docs/benchmarks.md describes (default)",
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
    parser.add_argument(
        "--decoding",
        choices=tuple(DECODINGS),
        default="greedy",
        help="how every answer is decoded, when profiled and when served: 'greedy' (default, the TRAIL paper's "
        "protocol) or 'sampled' (temperature 0.7, top-p 0.9, a seed per prompt; chunked prefill off on every "
        "engine). The predictors must have been trained on answers decoded the same way",
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
        "--prompt-predictor", type=Path, help="prompt-predictor file of the TRAIL engines (default: the shipped one)"
    )
    parser.add_argument(
        "--reverse-bins",
        choices=REVERSIBLE,
        help="serve with copies of the predictors whose bins are reversed (they predict long where the originals "
        "predict short): 'probe', or 'both' with the prompt predictor; what TRAIL does when its predictions are wrong",
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


def engine_args(max_num_seqs: int, decoding: Decoding) -> tuple[str, ...]:
    """Arguments every engine of a run starts with. Under seeded sampling, no chunked prefill on
    any engine: stock vLLM 0.32 on CPU dies on a seeded request whose prompt is prefilled in
    chunks (its sampler rewinds the request's generator, which CPU generators cannot), so every
    engine gets whole-prompt prefills and a token budget that fits the longest request."""
    args = ("--max-num-seqs", str(max_num_seqs))
    if not decoding.greedy:
        args += ("--no-enable-chunked-prefill", "--max-num-batched-tokens", str(MAX_MODEL_LEN))
    return args


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
    prompt_predictor: Path | None = None
    reverse_bins: str | None = None
    notes: list[str] = field(default_factory=list)
    short_requests: bool = False
    length_mix: str = "natural"
    decoding: Decoding = DECODINGS["greedy"]
    trail_endpoint: Server | None = None
    stock_endpoint: Server | None = None

    @property
    def engine_args(self) -> tuple[str, ...]:
        return engine_args(self.max_num_seqs, self.decoding)

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
        favours no policy (stock vLLM's own time per token was measured drifting by 15% in 17
        minutes). The first round is the first entry's first run (the capacity burst, if
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
    loads, seeded = _loads(args, preset)
    max_num_seqs = args.max_num_seqs or preset.max_num_seqs
    requests = args.requests or preset.requests
    output_cap = args.output_cap or preset.output_cap
    if max_num_seqs < 1:
        raise BenchError("--max-num-seqs must be at least 1")
    if requests < 1 or output_cap < 1:
        raise BenchError("--requests and --output-cap must be at least 1")
    if args.probe is None and SHIPPED_PROBE.is_file():  # the probe trained for the bundled model
        args.probe = SHIPPED_PROBE
    if args.prompt_predictor is None and SHIPPED_PROMPT_PREDICTOR.is_file():
        args.prompt_predictor = SHIPPED_PROMPT_PREDICTOR
    for flag, path in (("probe", args.probe), ("prompts", args.prompts), ("prompt predictor", args.prompt_predictor)):
        if path is not None and not path.is_file():
            raise BenchError(f"{flag} file {path} not found")
    _check_reversible(args)
    decoding = DECODINGS[args.decoding]
    entries, notes = _entries(args, preset, decoding)
    if any(load.share is not None for load in loads) and args.capacity is None:
        _check_capacity_measurable(entries, requests, max_num_seqs)
    trail_endpoint, stock_endpoint = _endpoints(args, entries)
    return BenchConfig(
        preset=args.preset or "full",
        requests=requests,
        loads=loads,
        output_cap=output_cap,
        entries=entries,
        sweep_rates=args.sweep_rates or preset.sweep_rates,
        time_limit=args.time_limit or preset.time_limit,
        max_prompt_tokens=preset.max_prompt_tokens,
        seeds=_seeds(args.seeds) if args.seeds else preset.seeds,
        seeded_loads=frozenset(seeded),
        capacity=args.capacity,
        max_num_seqs=max_num_seqs,
        max_wait_seconds=args.max_wait_seconds,
        probe=args.probe,
        prompts=args.prompts,
        prompt_predictor=args.prompt_predictor,
        reverse_bins=args.reverse_bins,
        short_requests=args.short_requests,
        length_mix=args.length_mix or preset.length_mix,
        decoding=decoding,
        output=args.output or Path("bench-results") / time.strftime("%Y%m%d-%H%M%S"),
        notes=notes,
        trail_endpoint=trail_endpoint,
        stock_endpoint=stock_endpoint,
    )


def _loads(args: argparse.Namespace, preset: Preset) -> tuple[tuple[Load, ...], set[str]]:
    """The loads to run (the capacity burst added when relative loads need it) and those run
    with every seed."""
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
    return loads, seeded


def _entries(args: argparse.Namespace, preset: Preset, decoding: Decoding) -> tuple[list[P.PolicyEntry], list[str]]:
    """The policy entries, and notes; predictors trained on another decoding are refused."""
    names = [n.strip() for n in args.policies.split(",") if n.strip()] if args.policies else list(preset.policies)
    c_sweep = _floats(args.c_sweep) if args.c_sweep is not None else preset.c_sweep
    entries, notes = P.resolve(names, c_sweep, have_probe=args.probe is not None, explicit=bool(args.policies))
    if any(e.engine == P.TRAIL for e in entries) and not args.trail_endpoint:
        predictors = [args.prompt_predictor] + ([args.probe] if any(e.probe for e in entries) else [])
        notes += check_decoding(predictors, decoding)
    return entries, notes


def _check_reversible(args: argparse.Namespace) -> None:
    """A given engine serves its own predictors: the bench can neither swap nor reverse them."""
    if args.trail_endpoint and (args.reverse_bins or args.prompt_predictor not in (None, SHIPPED_PROMPT_PREDICTOR)):
        raise BenchError("--prompt-predictor and --reverse-bins need engines the bench starts, not --trail-endpoint")
    reversed_files = {"probe": [args.probe], "both": [args.probe, args.prompt_predictor]}.get(args.reverse_bins, [])
    if None in reversed_files:
        raise BenchError(f"--reverse-bins {args.reverse_bins}: there is no predictor to reverse")


def _check_capacity_measurable(entries: list[P.PolicyEntry], requests: int, max_num_seqs: int) -> None:
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


def _endpoints(args: argparse.Namespace, entries: list[P.PolicyEntry]) -> tuple[Server | None, Server | None]:
    """Running servers given instead of started ones, checked reachable before any work."""
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
    return trail_endpoint, stock_endpoint


def check_decoding(predictors, decoding: Decoding) -> list[str]:
    """Refuse predictors trained on answers decoded otherwise than the run serves them: a probe
    reads the text being generated, and a length learnt from sampled answers says little about
    a greedy one (on the bundled model the greedy answer often loops to the cap). A predictor
    that records no decoding (an untrained smoke-test probe) is let through with a note."""
    notes = []
    for path in predictors:
        try:
            training = read_header(Path(path).read_bytes()).trail.get("training")
        except (OSError, ProbeFormatError) as error:
            raise BenchError(f"cannot read predictor {path}: {error}") from None
        trained = (training.get("data") or {}).get("sampling") if isinstance(training, dict) else None
        if not isinstance(trained, dict):
            notes.append(f"{path} records no decoding of its training answers: not checked against '{decoding.name}'")
        elif not decoding.trained_on(trained):
            raise BenchError(
                f"{path} was trained on answers decoded with {trained}, and this run decodes '{decoding.name}' "
                f"({decoding.key()}): train predictors on such answers (trail probe collect --temperature …), "
                "or run the bench with the decoding they were trained on (--decoding)"
            )
    return notes
