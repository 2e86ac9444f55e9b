"""Collection-side buffers and the shard format (runs inside the engine's model runner).

One shard is one ``.safetensors`` file holding finished requests, written atomically:

- ``prompt_mean`` ``[layers, R, H]`` fp16: each request's prompt-averaged state;
- ``prompt_last`` ``[layers, R, H]`` fp16 (format 2): the state at the last prompt position,
  the one that produces the first output token (a prompt mean is dominated by a few
  dimensions in which the first tokens' states are huge, unlike any output token's state);
- ``tokens`` ``[layers, T, H]`` fp16: the state of each output token fed back as input
  (output token j, for j = 0 .. L-2; the last token is never fed back);
- ``offsets`` ``[R+1]`` int64: request r's tokens are rows ``offsets[r]:offsets[r+1]``;
- ``lengths`` ``[R]`` int64: the answer length L in tokens;
- ``__metadata__["trail_shard"]``: JSON ``{"format_version", "ids", "layers", "hidden_size"}``.

Labels are not stored: they follow from L (quick_probe.py's convention: the prompt mean
predicts L-1 remaining tokens, output token j predicts L-j-2).
Layer-major tensors let a reader pull one layer without touching the others.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

SHARD_FORMAT_VERSION = 2  # 2 added prompt_last
SHARD_METADATA_KEY = "trail_shard"
SHARD_GLOB = "shard-*.safetensors"


@dataclass
class _Request:
    collect_id: str
    prompt_sum: torch.Tensor  # [layers, H] float32
    prompt_count: int = 0
    prompt_len: int = 0
    prompt_last: torch.Tensor | None = None  # [layers, H] fp16
    outputs: list[torch.Tensor] = field(default_factory=list)  # [layers, H] fp16 each

    @property
    def prompt_complete(self) -> bool:
        return self.prompt_len > 0 and self.prompt_count >= self.prompt_len


class RequestCollector:
    """Per-request states of the collected layers; finished requests go to shards.

    Memory is bounded by the running requests plus one shard's worth of finished ones.
    A preempted request recomputed from position 0 starts over (same states again).
    """

    def __init__(self, directory: str | os.PathLike[str], layers, hidden_size: int, shard_size: int = 64) -> None:
        self.directory = Path(directory) / "shards"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.layers = tuple(layers)
        self.hidden_size = hidden_size
        self.shard_size = max(1, shard_size)
        self.active: dict[str, _Request] = {}
        self.done: list[_Request] = []
        self.run = f"{time.strftime('%Y%m%d%H%M%S')}-{os.getpid()}"
        self.written = 0

    def observe(self, request_id: str, collect_id: str, hidden: torch.Tensor, start: int, prompt_len: int) -> None:
        """``hidden`` ``[rows, layers, H]``: this step's rows for the request, from position ``start``."""
        state = self.active.get(request_id)
        if state is None or start == 0:
            state = _Request(str(collect_id), torch.zeros(len(self.layers), self.hidden_size), prompt_len=prompt_len)
            self.active[request_id] = state
        prompt_rows = max(0, min(hidden.shape[0], prompt_len - start))
        if prompt_rows:
            state.prompt_sum += hidden[:prompt_rows].float().sum(dim=0).cpu()
            state.prompt_count += prompt_rows
            if start + prompt_rows == prompt_len:
                state.prompt_last = hidden[prompt_rows - 1].to(torch.float16).cpu()
        for row in range(prompt_rows, hidden.shape[0]):
            j = start + row - prompt_len
            value = hidden[row].to(torch.float16).cpu()
            if j < len(state.outputs):
                state.outputs[j] = value
            else:
                state.outputs.append(value)

    def finish(self, request_ids) -> None:
        for request_id in request_ids:
            state = self.active.pop(request_id, None)
            if state is not None and state.prompt_complete:
                self.done.append(state)
        if len(self.done) >= self.shard_size:
            self.flush()

    def flush(self, everything: bool = False) -> list[str]:
        """Write finished requests (with ``everything``: all requests seen) to a shard."""
        if everything:
            self.finish(list(self.active))
        if not self.done:
            return []
        done, self.done = self.done, []
        path = self.directory / f"shard-{self.run}-{self.written:05d}.safetensors"
        self._write(path, done)
        self.written += 1
        return [str(path)]

    def _write(self, path: Path, requests: list[_Request]) -> None:
        from safetensors.torch import save

        prompt_mean = torch.stack([(r.prompt_sum / r.prompt_count).to(torch.float16) for r in requests], dim=1)
        prompt_last = torch.stack([r.prompt_last for r in requests], dim=1)
        outputs = [t for r in requests for t in r.outputs]
        tokens = (
            torch.stack(outputs, dim=1)
            if outputs
            else torch.zeros(len(self.layers), 0, self.hidden_size, dtype=torch.float16)
        )
        counts = torch.tensor([len(r.outputs) for r in requests], dtype=torch.int64)
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
        meta = {
            "format_version": SHARD_FORMAT_VERSION,
            "ids": [r.collect_id for r in requests],
            "layers": list(self.layers),
            "hidden_size": self.hidden_size,
        }
        data = save(
            {
                "prompt_mean": prompt_mean.contiguous(),
                "prompt_last": prompt_last.contiguous(),
                "tokens": tokens.contiguous(),
                "offsets": offsets,
                "lengths": counts + 1,
            },
            metadata={SHARD_METADATA_KEY: json.dumps(meta)},
        )
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)


def flush_worker(worker) -> list[str]:
    """``collective_rpc`` target: flush the runner's collector (nothing is in flight)."""
    return worker.model_runner.trail_flush_collection()
