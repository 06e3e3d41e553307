"""The rehearsal's data and "distilled" base model: `prepare(out_dir)` writes, in about ten seconds,

    out_dir/train.parquet   the toy task in verl's RL schema (JustRL's prompt suffix on every question)
    out_dir/val.parquet     held-out problems of the same task
    out_dir/model/          a tiny Qwen2 (config, safetensors, tokenizer) briefly supervised on the answer
                            FORMAT only: `\\boxed{n}` with n a number of the question picked at random

Like JustRL starting from DeepSeek-R1-Distill-Qwen-1.5B, RL then starts from a model that already answers
in the rewarded format, so the reward has signal from the first step.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from justrl_hpc.dev.toy import task

N_VAL = 32
SFT_STEPS = 400
SFT_BATCH = 32
SFT_LR = 3e-3


def write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _format_sft(model: Any, tokenizer: Any, problems: list[task.Problem], seed: int) -> float:
    """Supervised steps on the answer format; returns the last loss."""
    import torch

    rng = random.Random(seed)
    torch.manual_seed(seed)
    cache: dict[task.Problem, list[int]] = {}

    def prompt_ids(p: task.Problem) -> list[int]:
        if p not in cache:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": p.user_message()}], tokenize=False, add_generation_prompt=True
            )
            cache[p] = tokenizer.encode(text, add_special_tokens=False)
        return cache[p]

    optimizer = torch.optim.AdamW(model.parameters(), lr=SFT_LR)
    # Short warmup, then linear decay: stable on a tiny model and done in a few hundred steps.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: min(1.0, (i + 1) / 20) * max(0.1, 1 - i / SFT_STEPS)
    )
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(SFT_STEPS):
        pairs = []
        for _ in range(SFT_BATCH):
            p = rng.choice(problems)
            target = tokenizer.encode(p.format_target(rng), add_special_tokens=False) + [
                tokenizer.eos_token_id
            ]
            pairs.append((prompt_ids(p), target))
        width = max(len(a) + len(b) for a, b in pairs)
        ids = torch.full((len(pairs), width), tokenizer.pad_token_id)
        labels = torch.full((len(pairs), width), -100)
        mask = torch.zeros((len(pairs), width), dtype=torch.long)
        for i, (prompt, target) in enumerate(pairs):
            seq = prompt + target  # left-padded, as prompts are in training
            ids[i, width - len(seq) :] = torch.tensor(seq)
            mask[i, width - len(seq) :] = 1
            labels[i, width - len(target) :] = torch.tensor(target)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        loss = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    model.eval()
    return float(loss.item())


def prepare(out_dir: Path, seed: int = 0) -> dict[str, Any]:
    """Write train.parquet, val.parquet and model/ under out_dir; returns a summary for the console."""
    import torch

    from justrl_hpc.dev.toy.tiny_model import build_tiny_model, build_tokenizer, save_tiny_model

    t0 = time.time()
    out_dir = Path(out_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    try:
        train, val = task.split(seed, N_VAL)
        write_parquet([task.row(p, "train", i) for i, p in enumerate(train)], out_dir / "train.parquet")
        write_parquet([task.row(p, "test", i) for i, p in enumerate(val)], out_dir / "val.parquet")
        corpus = [p.user_message() for p in train[:50]] + [f"\\boxed{{{n}}}" for n in range(10)]
        tokenizer = build_tokenizer(corpus)
        model = build_tiny_model(tokenizer, seed=seed)
        loss = _format_sft(model, tokenizer, train, seed)
        save_tiny_model(out_dir / "model", tokenizer=tokenizer, model=model)
    finally:
        torch.set_num_threads(threads)
    return {
        "train_rows": len(train),
        "val_rows": len(val),
        "vocab": len(tokenizer),
        "parameters": sum(p.numel() for p in model.parameters()),
        "format_sft_loss": round(loss, 3),
        "seconds": round(time.time() - t0, 1),
    }
