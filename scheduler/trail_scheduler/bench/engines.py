"""The engines a bench run needs: started (or reached) once each, warmed up, kept up together."""

from __future__ import annotations

import asyncio
from pathlib import Path

from trail_scheduler.bench import policies as P
from trail_scheduler.bench.config import BenchConfig, BenchError
from trail_scheduler.bench.loadgen import run_load
from trail_scheduler.bench.servers import Server, start_stock_vllm, start_trail_serve
from trail_scheduler.bench.workload import BenchRequest, Decoding

WARM_UP_TOKENS = 16


def warm_up(server: Server, model: str, sample, max_num_seqs: int, decoding: Decoding) -> dict:
    """One short burst, a full batch, before an engine's first measured run. Without it the two
    engines start unequal: stock vLLM's first run at a relative load follows the burst that
    measured the capacity, while ``trail serve``'s is its very first requests."""
    first = sample[:max_num_seqs]
    requests = [BenchRequest(f"warm-up-{i}", p.prompt, WARM_UP_TOKENS, 0.0) for i, p in enumerate(first)]
    records, seconds = asyncio.run(run_load(server.base, model, requests, decoding, time_limit=300))
    failed = [record.error for record in records if not record.ok]
    if failed:
        raise BenchError(f"the warm-up requests to {server.base} failed: {failed[0]}")
    return {"requests": len(requests), "seconds": round(seconds, 2)}


def empty_prefix_cache(server: Server, notes: list[str]) -> bool | None:
    """Before each measured run: otherwise a policy that runs a seed after another on the same
    engine finds its prompts already prefilled, and stock vLLM (one policy per seed) does not."""
    cold = server.reset_prefix_cache()
    if cold is not True and not any(note.startswith(server.base) for note in notes):
        why = "no /reset_prefix_cache: start vLLM with VLLM_SERVER_DEV_MODE=1" if cold is None else "blocks still held"
        notes.append(f"{server.base}: runs may reuse prompts earlier runs prefilled (prefix cache not emptied: {why})")
    return cold


def _engine_key(engine: str, probe: bool) -> tuple[str, bool]:
    """One engine per kind, and for TRAIL one with the probe and one without."""
    return engine, engine == P.TRAIL and probe


class Engines:
    """The engines the runs need: each started (or reached at its endpoint) once, warmed up
    before its first measured run, and kept up until the bench ends, so that runs on different
    engines can alternate (an idle engine takes no CPU). Probe-free TRAIL entries and those with
    the probe run on two ``trail serve`` engines: a loaded probe cannot be unloaded."""

    def __init__(self, config: BenchConfig, logs: Path, warm_ups: dict, progress, stack):
        self.config, self.logs, self.engine_args = config, logs, config.engine_args
        self.warm_ups, self.progress, self.stack = warm_ups, progress, stack
        self.reached: dict[tuple[str, bool], Server] = {}
        self.models: dict[tuple[str, bool], str] = {}  # the engines warmed up, and the model each serves

    def profiling(self) -> Server:
        """Where the answers are profiled: the given TRAIL endpoint, else the probe-free ``trail
        serve`` the prompt-only runs use (same engine arguments, so the same answers), so a bench
        starts no engine only to profile."""
        return self.config.trail_endpoint or self.reach(P.TRAIL, probe=False)

    def reach(self, engine: str, probe: bool) -> Server:
        key = _engine_key(engine, probe)
        if key not in self.reached:
            self.reached[key] = self._reach(*key)
        return self.reached[key]

    def serving(self, entry: P.PolicyEntry, warm_up_sample) -> tuple[Server, str]:
        """The server for ``entry`` and the model name it serves, warmed up with the first
        requests of ``warm_up_sample`` before its first measured run."""
        server = self.reach(entry.engine, entry.probe)
        key = _engine_key(entry.engine, entry.probe)
        if key not in self.models:
            model = server.served_model()
            name = key[0] + (" with the probe" if key[1] else "")
            self.warm_ups[name] = warm_up(server, model, warm_up_sample, self.config.max_num_seqs, self.config.decoding)
            self.models[key] = model
        return server, self.models[key]

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
            predictors = ("--probe", str(config.probe) if probe else "none")
            if config.prompt_predictor is not None:
                predictors += ("--prompt-predictor", str(config.prompt_predictor))
            server = start_trail_serve(self.logs, *predictors, *self.engine_args)
        self.stack.callback(server.stop)
        self.progress.remove_task(starting)
        return server
