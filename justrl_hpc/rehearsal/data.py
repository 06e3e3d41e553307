"""verl's RL parquet → tokenized prompts, and the resumable order in which training batches are drawn.

Rows follow verl's schema (`data_source`, `prompt` as chat messages, `ability`, `reward_model`,
`extra_info`). Prompts are rendered with the tokenizer's chat template exactly as verl's RLHFDataset does
(`apply_chat_template(..., add_generation_prompt=True, tokenize=False)`, then encoded without special
tokens); `data.filter_overlong_prompts` and `data.truncation` behave as in verl.

`DataOrder` is the rehearsal's StatefulDataLoader: a seeded permutation per epoch, `drop_last=True`, and
a two-number state (epoch, batches drawn in it) saved as `global_step_N/data.pt`, so a resumed run
continues the exact sample sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from justrl_hpc.errors import UserError


@dataclass
class Example:
    index: int  # row in the concatenated parquet files
    prompt_ids: list[int]
    data_source: str
    reward_model: dict[str, Any]
    extra_info: dict[str, Any]


def read_rows(files: list[str]) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for path in files:
        try:
            rows += pq.read_table(path).to_pylist()
        except FileNotFoundError as exc:
            raise UserError(f"no such parquet file: {path}", "data.train_files/val_files") from exc
    return rows


def load(
    files: list[str], tokenizer: Any, max_prompt_length: int, filter_overlong: bool, truncation: str, key: str
) -> list[Example]:
    rows = read_rows(files)
    out: list[Example] = []
    dropped = 0
    for i, row in enumerate(rows):
        for name in ("data_source", "prompt", "reward_model"):
            if name not in row:
                raise UserError(f"row {i} has no {name!r}: not verl's RL parquet schema", key)
        text = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) > max_prompt_length:
            if filter_overlong:
                dropped += 1
                continue
            ids = truncate(ids, max_prompt_length, truncation, key)
        out.append(
            Example(i, ids, row["data_source"], dict(row["reward_model"]), dict(row.get("extra_info") or {}))
        )
    if dropped:
        print(f"rehearsal: filtered {dropped} of {len(rows)} prompts over {max_prompt_length} tokens ({key})")
    return out


def truncate(ids: list[int], limit: int, mode: str, key: str) -> list[int]:
    if mode == "left":
        return ids[-limit:]
    if mode == "right":
        return ids[:limit]
    if mode == "middle":
        left = limit // 2
        return ids[:left] + ids[len(ids) - (limit - left) :]
    raise UserError(
        f"a prompt has {len(ids)} tokens > data.max_prompt_length {limit}; raise it, set "
        "data.filter_overlong_prompts=True or data.truncation=left|right|middle",
        key,
    )


@dataclass
class DataOrder:
    """Which rows make up each training batch: deterministic, resumable, one permutation per epoch."""

    num_rows: int
    batch_size: int
    seed: int
    shuffle: bool = True
    epoch: int = 0
    batch_in_epoch: int = 0
    _perm: list[int] = field(default_factory=list, repr=False)
    _perm_epoch: int = field(default=-1, repr=False)

    @property
    def batches_per_epoch(self) -> int:
        return self.num_rows // self.batch_size  # drop_last, as verl's train dataloader

    def permutation(self, epoch: int) -> list[int]:
        import numpy as np

        if not self.shuffle:
            return list(range(self.num_rows))
        return [int(x) for x in np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)]

    def next_batch(self, total_epochs: int) -> tuple[int, list[int]] | None:
        """(epoch, row indices) of the next batch, or None when total_epochs are used up."""
        if self.batch_in_epoch >= self.batches_per_epoch:
            self.epoch += 1
            self.batch_in_epoch = 0
        if self.epoch >= total_epochs or self.batches_per_epoch == 0:
            return None
        if self._perm_epoch != self.epoch:
            self._perm = self.permutation(self.epoch)
            self._perm_epoch = self.epoch
        start = self.batch_in_epoch * self.batch_size
        self.batch_in_epoch += 1
        return self.epoch, self._perm[start : start + self.batch_size]

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_rows": self.num_rows,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("num_rows") != self.num_rows or state.get("batch_size") != self.batch_size:
            # verl would resume silently with a shifted order; say it at least.
            print(
                f"rehearsal: warning: data.pt was written for {state.get('num_rows')} rows in batches of "
                f"{state.get('batch_size')}; now {self.num_rows} rows in batches of {self.batch_size}: "
                "the sample order does not continue exactly"
            )
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.seed = int(state.get("seed", self.seed))
        self.shuffle = bool(state.get("shuffle", self.shuffle))
        self._perm_epoch = -1
