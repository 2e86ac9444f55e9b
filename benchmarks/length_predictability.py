"""How much of an answer's length its prompt decides, and what ordering by it is worth (issue 14).

The bench's oracle (TRAIL+) knows each request's sampled length: with a seed fixed per
request, the run is the same for every policy, so the oracle knows the outcome of the
sampling itself. A predictor that reads only the prompt cannot know that; the best it can
know is the length the prompt gives on average. This measures the difference on a
collection's held-out split:

1. **Resample** every prompt of the split ``--samples`` more times through the engine, with
   the collection's sampling (temperature, top-p, cap) and a new seed per sample (request
   ``k`` of the split gets seed ``s * 100003 + k`` in sample ``s``). Resumable: each
   finished sample is written to ``OUTPUT/resamples.json`` and skipped on a rerun.
2. **Analyse**: the share of a length's variance that the prompt decides (the intraclass
   correlation over the collected answer and the fresh samples), the rank correlation
   between two samples of the same prompts, the shipped prompt predictor's against each
   sample; then ``trail probe eval``'s ideal-engine bursts (the collected answers, the
   chat length mix) ranked while waiting by the shipped prompt predictor, by another sample of the
   same prompt, and by the mean of several, beside FCFS and the oracle.

Writes ``OUTPUT/report.json`` and ``OUTPUT/predictability.png``. Needs the collection
(``trail probe collect``) and the engine; about 11 minutes per sample of 287 prompts on a
2-core machine.

    .venv/bin/python benchmarks/length_predictability.py runs/smollm2-3k \\
        [--split validation] [--samples 3] [--output docs/benchmarks/predictability]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from trail_contract.settings import SchedulerSettings
from trail_scheduler.core.refine import expected_remaining
from trail_scheduler.length_mix import CHAT_MIX
from trail_scheduler.predictors import SHIPPED_PROBE, SHIPPED_PROMPT_PREDICTOR
from trail_scheduler.probe import load_probe
from trail_scheduler.probe.prompt import load_prompt_predictor
from trail_scheduler.training.data import Collection
from trail_scheduler.training.evaluate import (
    probe_readings,
    rank_correlation,
    recorded_requests,
    simulated_bursts,
)

SEED_STRIDE = 100_003  # sample s, request k: seed s * SEED_STRIDE + k (no two requests share one)


def resample(collection: Collection, ids: list[str], samples: int, path: Path, engine: dict) -> dict[str, dict]:
    """``{sample: {prompt id: length}}`` for samples 1..``samples``; finished samples are kept in ``path``."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from trail_scheduler.vllm.engine_config import TrailEngineConfig, engine_args

    done = json.loads(path.read_text()) if path.exists() else {}
    todo = [s for s in range(1, samples + 1) if str(s) not in done]
    if not todo:
        return done
    sampling = collection.info["sampling"]
    prompts = collection.prompts()
    # TRAIL's worker in arrival order: it keeps seeded requests whose prompts are prefilled
    # in chunks from crashing stock vLLM's CPU sampler.
    config = TrailEngineConfig(settings=SchedulerSettings(policy="fcfs"))
    llm = LLM(
        **engine_args(collection.info["model_path"], config)
        | dict(
            max_model_len=collection.info["max_prompt_tokens"] + sampling["max_tokens"],
            max_num_seqs=engine["max_num_seqs"],
            kv_cache_memory_bytes=int(engine["kv_cache_gib"] * 2**30),
        )
    )
    tokenizer = llm.get_tokenizer()
    inputs = [
        TokensPrompt(prompt_token_ids=tokenizer(prompts[i]["rendered"], add_special_tokens=False).input_ids)
        for i in ids
    ]
    for sample in todo:
        started = time.perf_counter()
        params = [
            SamplingParams(
                temperature=sampling["temperature"],
                top_p=sampling["top_p"],
                max_tokens=sampling["max_tokens"],
                seed=sample * SEED_STRIDE + k,
            )
            for k in range(len(ids))
        ]
        outputs = llm.generate(inputs, params, use_tqdm=True)
        done[str(sample)] = {i: len(output.outputs[0].token_ids) for i, output in zip(ids, outputs)}
        tokens = sum(done[str(sample)].values())
        seconds = time.perf_counter() - started
        print(f"sample {sample}: {tokens} tokens in {seconds:.0f} s ({tokens / seconds:.0f} tokens/s)", flush=True)
        path.write_text(json.dumps(done))
    return done


def intraclass_correlation(lengths: np.ndarray) -> float:
    """ICC(1) of ``[prompts, samples]``: the share of one answer's length variance that lies
    between prompts (what a perfect prompt-only predictor explains), the rest between samples."""
    count, k = lengths.shape
    between = k * ((lengths.mean(1) - lengths.mean()) ** 2).sum() / (count - 1)
    within = ((lengths - lengths.mean(1, keepdims=True)) ** 2).sum() / (count * (k - 1))
    return float((between - within) / (between + (k - 1) * within))


def analyse(collection: Collection, split: str, resamples: dict, bursts: int, burst_size: int, slots: int) -> dict:
    probe = load_probe(SHIPPED_PROBE)
    predictor = load_prompt_predictor(SHIPPED_PROMPT_PREDICTOR)
    states = collection.load(probe.layer, split, probe.prompt_reading)
    prompts = collection.prompts()
    collected = states.lengths.astype(np.float64)
    fresh = np.array([[resamples[s][i] for s in sorted(resamples, key=int)] for i in states.ids], dtype=np.float64)
    lengths = np.hstack([collected[:, None], fresh])
    cap = collection.info["sampling"]["max_tokens"]
    first, readings = probe_readings(probe, states)
    distributions = predictor.probabilities([prompts[i]["rendered"] for i in states.ids])
    shipped = np.atleast_1d(expected_remaining(distributions, predictor.bins))

    estimates = {"prompt predictor (shipped)": shipped}
    for m in range(1, fresh.shape[1] + 1):
        estimates[f"mean of {m} other sample{'s' if m > 1 else ''}"] = fresh[:, :m].mean(1)
    simulated = {}
    for name, estimate in estimates.items():
        distribution = (predictor.bins, distributions) if estimate is shipped else None
        recorded = recorded_requests(states, prompts, first, readings, estimate, distribution)
        simulated[name] = {
            "rank_correlation": round(rank_correlation(estimate, collected), 3),
            "mae_tokens": round(float(np.abs(estimate - collected).mean()), 1),
            "bursts": simulated_bursts(
                recorded, SchedulerSettings(), probe.bins, bursts, burst_size, slots, CHAT_MIX, cap
            ),
        }
    k = lengths.shape[1]
    return {
        "split": split,
        "prompts": len(states.ids),
        "samples_per_prompt": k,
        "sampling": collection.info["sampling"],
        "at_cap_share_per_sample": [round(float((lengths[:, j] >= cap).mean()), 3) for j in range(k)],
        "intraclass_correlation": round(intraclass_correlation(lengths), 3),
        "rank_correlation_between_samples": [
            round(rank_correlation(lengths[:, a], lengths[:, b]), 3) for a in range(k) for b in range(a + 1, k)
        ],
        "prompt_predictor_rank_correlation_per_sample": [
            round(rank_correlation(shipped, lengths[:, j]), 3) for j in range(k)
        ],
        "ranked_while_waiting_by": simulated,
        "definitions": {
            "intraclass_correlation": "ICC(1) over the collected answer and the fresh samples: the share of one "
            "answer's length variance that lies between prompts; the rest is the sampling's",
            "ranked_while_waiting_by": "the collected answers of the split, served in simulated bursts (trail "
            "probe eval's ideal engine, chat length mix) while ranked in the waiting queue by this estimate; "
            "the probe refines running requests as it does in the engine; 'mean of m other samples' is "
            "what a prompt-only predictor approaches as it learns the prompt's average length",
        },
    }


def plot(report: dict, lengths: tuple[list[float], list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    jitter = np.random.default_rng(0).uniform(-4, 4, size=(2, len(lengths[0])))
    left.scatter(np.add(lengths[0], jitter[0]), np.add(lengths[1], jitter[1]), s=8, alpha=0.5)
    left.set_xlabel("collected answer (tokens)")
    left.set_ylabel("the same prompt, a new seed (tokens)")
    pairs = report["rank_correlation_between_samples"]
    left.set_title(f"two samples of {report['prompts']} prompts: rank correlation {pairs[0]:.2f}")
    rows = report["ranked_while_waiting_by"]
    names = list(rows)
    oracle = rows[names[0]]["bursts"]["trail+"]["mean_latency_ratio"]  # the same bursts for every estimate
    labels = ["FCFS"] + names + ["oracle (the sampled length)"]
    c0 = [1.0] + [rows[n]["bursts"]["trail, c=0"]["mean_latency_ratio"] for n in names] + [oracle]
    defaults = [np.nan] + [rows[n]["bursts"]["trail"]["mean_latency_ratio"] for n in names] + [np.nan]
    y = np.arange(len(labels))
    right.barh(y - 0.2, c0, height=0.4, label="c = 0 (order only)")
    right.barh(y + 0.2, defaults, height=0.4, label="c = 0.8 (defaults)")
    right.set_yticks(y, labels)
    right.invert_yaxis()
    right.set_xlim(0.6, 1.05)
    right.set_xlabel("simulated mean latency / FCFS (burst of 80, chat mix)")
    right.set_title("ranked while waiting by")
    right.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("collection")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--samples", type=int, default=3, help="fresh samples per prompt")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks/predictability"))
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--kv-cache-gib", type=float, default=4.0)
    parser.add_argument("--bursts", type=int, default=8)
    parser.add_argument("--burst-size", type=int, default=80)
    parser.add_argument("--slots", type=int, default=8)
    args = parser.parse_args()
    collection = Collection(args.collection)
    lengths = collection.lengths()
    ids = [i for i in collection.split["ids"][args.split] if i in lengths]
    args.output.mkdir(parents=True, exist_ok=True)
    engine = {"max_num_seqs": args.max_num_seqs, "kv_cache_gib": args.kv_cache_gib}
    resamples = resample(collection, ids, args.samples, args.output / "resamples.json", engine)
    resamples = {s: resamples[s] for s in map(str, range(1, args.samples + 1))}
    report = analyse(collection, args.split, resamples, args.bursts, args.burst_size, args.slots)
    (args.output / "report.json").write_text(json.dumps(report, indent=2))
    plot(report, ([lengths[i] for i in ids], [resamples["1"][i] for i in ids]), args.output / "predictability.png")
    print(
        json.dumps({k: v for k, v in report.items() if k not in ("ranked_while_waiting_by", "definitions")}, indent=2)
    )
    for name, row in report["ranked_while_waiting_by"].items():
        bursts = row["bursts"]
        print(
            f"{name:28s} rank corr {row['rank_correlation']:.3f}  MAE {row['mae_tokens']:6.1f}  "
            f"c=0 {bursts['trail, c=0']['mean_latency_ratio']:.3f}  "
            f"defaults {bursts['trail']['mean_latency_ratio']:.3f}  "
            f"oracle {bursts['trail+']['mean_latency_ratio']:.3f}"
        )


if __name__ == "__main__":
    main()
