"""The policy: load the Hugging Face model, sample responses, compute per-token log-probs and entropy.

Shapes follow verl's batches: prompts left-padded to `data.max_prompt_length`, responses right-padded to
`data.max_response_length`, `attention_mask` = prompt mask ++ response mask (a response ends at and
includes its EOS), position ids from the mask. Log-probs divide the logits by the rollout temperature,
as verl's actor does, with verl's own `logprobs_from_logits` / `entropy_from_logits`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Sampling:
    n: int
    max_new_tokens: int
    temperature: float
    top_p: float
    do_sample: bool


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def load(model_path: str) -> tuple[Any, Any]:
    """(model in float32, eval mode; tokenizer) from a Hugging Face folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype="float32")
    model.eval()
    return model, tokenizer


def model_from_config(config_dict: dict[str, Any]) -> Any:
    """The same architecture with uninitialised weights (rollout workers receive weights by sync)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    quiet_transformers()
    config_dict = dict(config_dict)
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    model = AutoModelForCausalLM.from_config(config)
    model.eval()
    return model


def left_pad(seqs: list[list[int]], width: int, pad_id: int) -> tuple[Any, Any]:
    import torch

    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


def right_pad(seqs: list[list[int]], width: int, pad_id: int) -> tuple[Any, Any]:
    import torch

    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
    return ids, mask


def position_ids(attention_mask: Any) -> Any:
    # verl's compute_position_id_with_mask
    import torch

    return torch.clip(torch.cumsum(attention_mask, dim=-1) - 1, min=0, max=None)


def generate(
    model: Any, prompts: list[list[int]], sampling: Sampling, eos_id: int, pad_id: int, seed: int
) -> list[list[int]]:
    """`sampling.n` responses per prompt (grouped: prompt 0's n first). Each ends at its EOS or the limit."""
    import torch

    if not prompts:
        return []
    torch.manual_seed(seed)  # the same weights, prompts and seed give the same samples on any worker
    ids, mask = left_pad(prompts, max(len(p) for p in prompts), pad_id)
    ids = ids.repeat_interleave(sampling.n, dim=0)
    mask = mask.repeat_interleave(sampling.n, dim=0)
    kwargs: dict[str, Any] = {"do_sample": sampling.do_sample}
    if sampling.do_sample:
        kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=sampling.max_new_tokens,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
            **kwargs,
        )
    responses = []
    for row in out[:, ids.shape[1] :].tolist():
        cut = row.index(eos_id) + 1 if eos_id in row else len(row)
        responses.append(row[:cut][: sampling.max_new_tokens])
    return responses


def log_probs(
    model: Any,
    input_ids: Any,
    attention_mask: Any,
    response_width: int,
    temperature: float,
    with_entropy: bool,
) -> tuple[Any, Any | None]:
    """Per-token log-prob of each response token (B, R) and, if asked, the entropy at each position."""
    from verl.utils.torch_functional import entropy_from_logits, logprobs_from_logits

    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask))
    # Logits at position t predict token t+1: the response's R tokens come from the R positions before them.
    logits = out.logits[:, -response_width - 1 : -1, :].float() / temperature
    responses = input_ids[:, -response_width:]
    logp = logprobs_from_logits(logits, responses)
    entropy = entropy_from_logits(logits) if with_entropy else None
    return logp, entropy
