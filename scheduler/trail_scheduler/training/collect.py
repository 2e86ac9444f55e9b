"""``trail probe collect``: run the serving engine on prompts and keep its hidden states.

The engine is vLLM with TRAIL's scheduler and worker, as ``trail serve`` builds it; the
runner's collection mode (TrailEngineConfig.collect_dir) captures the chosen layers in
the same forward pass that serves, and writes finished requests to shards. This
process feeds prompts, tracks progress and records the split and the run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from pathlib import Path

from trail_scheduler.assets import is_short_request, read_prompt_file, sharegpt_first_turns, unique_prompts
from trail_scheduler.training.data import SPLITS, Collection, CollectionError
from trail_scheduler.training.options import CollectOptions

logger = logging.getLogger("trail.collect")


def model_dims(model_dir: str) -> tuple[int, int]:
    """(num_hidden_layers, hidden_size) from the checkpoint's config, before any engine starts."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    config = getattr(config, "text_config", config)
    return int(config.num_hidden_layers), int(config.hidden_size)


def resolve_layers(layers, num_layers: int) -> tuple[int, ...]:
    """Named layer sets, checked against the model (index i: after i decoder layers)."""
    if layers == "all":
        return tuple(range(num_layers))
    if layers == "sweep":
        return tuple(sorted({*range(2, num_layers, max(1, num_layers // 6)), max(1, num_layers // 3)}))
    layers = tuple(sorted(set(int(x) for x in layers)))
    bad = [x for x in layers if not 0 <= x < num_layers]
    if not layers or bad:
        raise CollectionError(
            f"layer(s) {bad or '(none)'} out of range: "
            f"this model has {num_layers} layers, valid indices 0..{num_layers - 1}"
        )
    return layers


def read_prompts(options: CollectOptions) -> list[tuple[str, str]]:
    """(id, user message) pairs, de-duplicated by text."""
    if options.prompts_file is not None:
        rows = read_prompt_file(options.prompts_file)
    else:
        rows = list(sharegpt_first_turns(limit=options.pool))
    unique = unique_prompts(rows[: options.pool] if options.pool else rows)
    if not unique:
        raise CollectionError(f"no prompts in {options.prompts_file or 'the ShareGPT data'}")
    return unique


def _fraction(seed: int, prompt_id: str) -> float:
    digest = hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(
    ids: list[str], options: CollectOptions, short: set[str] = frozenset()
) -> tuple[list[str], dict[str, list[str]]]:
    """Seeded: a shuffled order, the first ``benchmark_size`` set aside for benchmarks, the
    rest train/validation/test by a hash of (seed, id) — a prompt's split never depends
    on how many are collected. Returns the collection order and the ids per split.

    With ``short_requests_first``, the ``short`` ids lead the order: the benchmark split is
    drawn from them, and the rest of them are collected before the other prompts."""
    order = list(ids)
    random.Random(options.seed).shuffle(order)
    if options.short_requests_first:
        order.sort(key=lambda prompt_id: prompt_id not in short)  # stable: shuffled within each group
    bench = order[: options.benchmark_size]
    rest = order[options.benchmark_size :]
    split = {name: [] for name in SPLITS}
    split["benchmark"] = bench
    for prompt_id in rest:
        u = _fraction(options.seed, prompt_id)
        name = (
            "validation"
            if u < options.validation_fraction
            else ("test" if u < options.validation_fraction + options.test_fraction else "train")
        )
        split[name].append(prompt_id)
    return rest, split


def _write_json(path: Path, value) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2))
    os.replace(tmp, path)


def prepare(options: CollectOptions) -> tuple[dict, list[dict]]:
    """Validate the inputs and write the folder's prompts, split and settings (no engine).

    Returns the collection info and the prompts still to collect, in order.
    """
    from transformers import AutoTokenizer

    from trail_scheduler.assets import BUNDLED_MODEL_NAME, prepare_bundled_model

    model_dir = options.model or str(prepare_bundled_model())
    model_name = BUNDLED_MODEL_NAME if options.model is None else options.model
    num_layers, hidden_size = model_dims(model_dir)
    layers = resolve_layers(options.layers, num_layers)
    for name, value in (("max_tokens", options.max_tokens), ("limit", options.limit)):
        if value < 1:
            raise CollectionError(f"{name} must be at least 1, got {value}")
    output = Path(options.output)
    output.mkdir(parents=True, exist_ok=True)
    settings = {
        "model": model_name,
        "model_path": model_dir,
        "num_layers": num_layers,
        "hidden_size": hidden_size,
        "layers": list(layers),
        "source": str(options.prompts_file) if options.prompts_file else "sharegpt-first-turns",
        "sampling": {"temperature": options.temperature, "top_p": options.top_p, "max_tokens": options.max_tokens},
        "chat_template": True,
        "max_prompt_tokens": options.max_prompt_tokens,
        "split": {
            "seed": options.seed,
            "benchmark_size": options.benchmark_size,
            # recorded only when on, so collections made before the option still resume
            **({"short_requests_first": True} if options.short_requests_first else {}),
            "validation_fraction": options.validation_fraction,
            "test_fraction": options.test_fraction,
        },
    }
    info_path = output / "collection.json"
    info = {**settings, "runs": []}
    if info_path.exists():
        previous = json.loads(info_path.read_text())
        changed = [k for k, v in settings.items() if k not in ("model_path",) and previous.get(k) != v]
        if changed:
            raise CollectionError(
                f"{output} was collected with other settings ({', '.join(changed)} differ); "
                "use a new folder or the same settings to resume"
            )
        info = previous
    prompts_path = output / "prompts.jsonl"
    if prompts_path.exists():
        rows = [json.loads(line) for line in prompts_path.read_text().splitlines() if line.strip()]
        split = json.loads((output / "split.json").read_text())["ids"]
        order = json.loads((output / "split.json").read_text())["order"]
    else:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        pairs = read_prompts(options)
        rows, skipped = [], 0
        for prompt_id, text in pairs:
            rendered = tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
            count = len(tokenizer(rendered, add_special_tokens=False).input_ids)
            if count > options.max_prompt_tokens:
                skipped += 1
                continue
            rows.append({"id": prompt_id, "prompt": text, "rendered": rendered, "prompt_tokens": count})
        if not rows:
            raise CollectionError(f"no prompt fits max_prompt_tokens={options.max_prompt_tokens}")
        short = {r["id"] for r in rows if is_short_request(r["prompt"])}
        order, split = assign_splits([r["id"] for r in rows], options, short)
        by_split = {i: name for name, ids in split.items() for i in ids}
        for row in rows:
            row["split"] = by_split[row["id"]]
        info["prompts"] = {"read": len(pairs), "too_long": skipped, "pool": len(rows)}
        _write_json(output / "split.json", {**settings["split"], "ids": split, "order": order})
        with (output / "benchmark.jsonl").open("w") as handle:
            bench = set(split["benchmark"])
            for row in rows:
                if row["id"] in bench:
                    handle.write(json.dumps({"id": row["id"], "prompt": row["prompt"]}) + "\n")
        with prompts_path.open("w") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
        _write_json(info_path, info)
    by_id = {r["id"]: r for r in rows}
    done = Collection(output).collected_ids() if (output / "shards").exists() else set()
    wanted = order[: options.limit]
    todo = [by_id[i] for i in wanted if i not in done]
    info["already_collected"] = len(done & set(wanted))
    return info, todo


def collect(options: CollectOptions) -> dict:
    """Collect; returns this run's summary (also appended to ``collection.json``)."""
    info, todo = prepare(options)
    output = Path(options.output)
    summary = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "skipped_done": info.pop("already_collected"),
        "requested": len(todo),
    }
    if not todo:
        logger.info("all %d prompts already collected in %s", summary["skipped_done"], output)
        return {**summary, "collected": 0}
    logger.info("collecting %d prompts (%d already done) into %s", len(todo), summary["skipped_done"], output)
    results, seconds = _run_engine(options, info, todo)
    # The runner derives each length from the states it saw; vLLM reports its own.
    lengths = Collection(output).lengths()
    mismatched = sum(1 for i, result in results.items() if i in lengths and lengths[i] != result["length"])
    if mismatched:
        raise CollectionError(
            f"{mismatched} collected requests have a state count that disagrees with vLLM's output length"
        )
    tokens = sum(r["length"] for r in results.values())
    summary.update(
        collected=len(results),
        output_tokens=tokens,
        seconds=round(seconds, 1),
        tokens_per_second=round(tokens / max(seconds, 1e-9), 1),
        hit_max_tokens=sum(r["finish_reason"] == "length" for r in results.values()),
    )
    info = json.loads((output / "collection.json").read_text())
    info["runs"].append(summary)
    _write_json(output / "collection.json", info)
    return summary


def _run_engine(options: CollectOptions, info: dict, todo: list[dict]) -> tuple[dict, float]:
    from tqdm import tqdm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from trail_scheduler.core.policy import SchedulerSettings
    from trail_scheduler.vllm.collector import flush_worker
    from trail_scheduler.vllm.engine_config import TrailEngineConfig, engine_args
    from trail_scheduler.vllm.runner import COLLECT_ID_ARG

    engine_config = TrailEngineConfig(
        settings=SchedulerSettings(policy="fcfs"),  # arrival order: no policy preemptions while collecting
        collect_dir=str(options.output),
        collect_layers=tuple(info["layers"]),
        collect_shard_size=options.shard_size,
    )
    # The flush below hands the engine-core process a function (pickled); the engine core
    # is this process's own child. (An in-process engine core ran 3x slower on 2 cores.)
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    llm = LLM(
        **engine_args(info["model_path"], engine_config)
        | dict(
            max_model_len=options.max_prompt_tokens + options.max_tokens,
            max_num_seqs=options.max_num_seqs,
            distributed_executor_backend="uni",
            kv_cache_memory_bytes=int(options.kv_cache_gib * 2**30),
            seed=options.seed,
        )
    )
    tokenizer = llm.get_tokenizer()
    engine = llm.llm_engine
    results: dict[str, dict] = {}
    pending = list(reversed(todo))
    in_flight = 0
    started = time.perf_counter()
    tokens = 0
    bar = tqdm(total=len(todo), desc="collect", unit="prompt")
    deadline = started + options.max_minutes * 60 if options.max_minutes else None
    while pending or in_flight:
        if deadline is not None and time.perf_counter() > deadline and pending:
            logger.info(
                "time limit reached: finishing the %d running prompts, %d left for a rerun", in_flight, len(pending)
            )
            bar.total = bar.n + in_flight
            pending = []
        while pending and in_flight < options.max_num_seqs:  # a free slot is refilled next step
            row = pending.pop()
            params = SamplingParams(
                temperature=options.temperature,
                top_p=options.top_p,
                max_tokens=options.max_tokens,
                extra_args={COLLECT_ID_ARG: row["id"]},
            )
            ids = tokenizer(row["rendered"], add_special_tokens=False).input_ids
            engine.add_request(f"collect-{row['id']}", TokensPrompt(prompt_token_ids=ids), params)
            in_flight += 1
        for output in engine.step():
            if output.finished:
                in_flight -= 1
                completion = output.outputs[0]
                prompt_id = output.request_id.removeprefix("collect-")
                results[prompt_id] = {"length": len(completion.token_ids), "finish_reason": completion.finish_reason}
                tokens += len(completion.token_ids)
                bar.update()
                bar.set_postfix(tok_s=f"{tokens / (time.perf_counter() - started):.0f}")
    engine.collective_rpc(flush_worker)
    bar.close()
    return results, time.perf_counter() - started
