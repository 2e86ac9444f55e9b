"""A probe trained in a minute on the bundled model, for tests that need real predictions.

Hidden states come from transformers (same checkpoint, same layer convention as
vLLM's auxiliary outputs: index i = residual stream after i decoder layers). Labels
follow the engine's: the prompt average predicts L-1 remaining tokens, the state of
output token j predicts L-j-2 (what is left after the token that step samples).
"""

from __future__ import annotations

from pathlib import Path

import torch

from trail_scheduler.assets import bundled_model_path, sharegpt_first_turns
from trail_scheduler.core.bins import LengthBins
from trail_scheduler.probe import LengthProbe, save_probe

LAYER = 10
MAX_TOKENS = 96


def train_quick_probe(path: Path, prompts: int = 12, seed: int = 0) -> tuple[str, list[str]]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model_dir = bundled_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    bins = LengthBins.uniform(8, MAX_TOKENS)
    texts = [text[:600] for _, text in sharegpt_first_turns(limit=prompts)]
    chats = [
        tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False)
        for t in texts
    ]
    # One batch for every prompt (left-padded), then each answer's states on its own, unpadded.
    tokenizer.padding_side = "left"
    batch = tokenizer(chats, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=MAX_TOKENS, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    features, labels = [], []
    for row, mask in zip(out, batch["attention_mask"], strict=True):
        prompt = row[: mask.shape[0]][mask.bool()]
        answer = row[mask.shape[0] :].tolist()
        generated = answer.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in answer else len(answer)
        ids = torch.cat([prompt, torch.tensor(answer[:generated])])[None]
        with torch.inference_mode():
            states = model(ids, output_hidden_states=True).hidden_states[LAYER][0]
        prompt_len = prompt.shape[0]
        features.append(states[:prompt_len].mean(0))
        labels.append(bins.index(max(0, generated - 1)))
        for j in range(generated - 1):
            features.append(states[prompt_len + j])
            labels.append(bins.index(max(0, generated - j - 2)))
    x, y = torch.stack(features), torch.tensor(labels)
    probe = LengthProbe(x.shape[1], bins.count)
    optimiser = torch.optim.AdamW(probe.parameters(), lr=1e-3)
    for _ in range(300):
        batch = torch.randint(0, len(x), (256,))
        loss = torch.nn.functional.cross_entropy(probe(x[batch]), y[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    sha = save_probe(
        probe.eval(),
        bins,
        path,
        model="SmolLM2-135M-Instruct",
        layer=LAYER,
        training={"recipe": "tests/engine/quick_probe.py", "prompts": prompts, "steps": 300},
    )
    return sha, texts
