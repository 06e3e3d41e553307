"""The generator interface and its two implementations.

A generator turns user messages (the benchmark prompt) into sampled responses: it applies the model's chat
template, samples one response per message with that message's own seed, and reports how many response
tokens it really produced. Two implementations behind the same Protocol:

- `VLLMGenerator` — production, on GPU nodes: one vLLM engine per GPU of the allocation (data parallel), each
  in its own (non-daemonic: vLLM's EngineCore is its child) process pinned to one of the job's CUDA devices.
  vLLM is imported only there. Its run on vLLM's CPU build is the vLLM-on-CPU issue's; the tests here use the
  transformers generator.
- `TransformersGenerator` — CPU (or one GPU) with `model.generate`: used by the tests and the rehearsal with a
  tiny model. One sample per call, seeded by `torch.manual_seed(seed)`, so a sample is the same whether it is
  generated in a first run or after a restart.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 31744


@dataclass(frozen=True)
class Generation:
    text: str
    tokens: int  # response tokens generated, EOS included
    truncated: bool  # stopped by the token limit, not by EOS


class Generator(Protocol):
    name: str

    def generate(
        self, messages: Sequence[str], params: SamplingParams, seeds: Sequence[int]
    ) -> list[Generation]: ...

    def close(self) -> None: ...


def chat_text(tokenizer: Any, message: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
    )


class TransformersGenerator:
    name = "transformers"

    def __init__(self, model_path: str, device: str = "cpu") -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from justrl_hpc.jobs.export.job import _quiet_transformers

        with _quiet_transformers():
            self.tokenizer = AutoTokenizer.from_pretrained(model_path)
            self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype="float32")
        self.model.eval()
        self.device = device
        self.model.to(device)
        self.max_positions = int(getattr(self.model.config, "max_position_embeddings", 0) or 0)

    def generate(
        self, messages: Sequence[str], params: SamplingParams, seeds: Sequence[int]
    ) -> list[Generation]:
        import torch

        if len(messages) != len(seeds):
            raise ValueError(f"{len(messages)} messages but {len(seeds)} seeds")
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        out: list[Generation] = []
        for message, seed in zip(messages, seeds, strict=True):
            ids = self.tokenizer.encode(chat_text(self.tokenizer, message), add_special_tokens=False)
            budget = params.max_new_tokens
            if self.max_positions:  # a tiny model's context is short; never ask past its positions
                budget = min(budget, self.max_positions - len(ids))
            if budget <= 0:
                out.append(Generation("", 0, True))
                continue
            torch.manual_seed(seed)
            input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
            with torch.no_grad():
                # temperature 0 is greedy (the judge's decoding), as vLLM reads it
                sampling = (
                    {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": 0}
                    if params.temperature > 0
                    else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
                )
                seq = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    **sampling,
                    max_new_tokens=budget,
                    eos_token_id=eos,
                    pad_token_id=pad if pad is not None else eos,
                )
            response = seq[0, len(ids) :].tolist()
            ended = eos in response
            if ended:
                response = response[: response.index(eos) + 1]
            text = self.tokenizer.decode(response, skip_special_tokens=True)
            out.append(Generation(text, len(response), not ended))
        return out

    def close(self) -> None:
        self.model = None


def worker_devices(visible: str | None, gpus: int) -> list[str]:
    """The CUDA_VISIBLE_DEVICES of each engine: the i-th of the devices Slurm gave the job (its own
    CUDA_VISIBLE_DEVICES, e.g. "4,5,6,7" on a shared node), not 0..gpus-1 of the whole node."""
    given = [d.strip() for d in (visible or "").split(",") if d.strip()]
    if not given:
        return [str(i) for i in range(gpus)]
    if len(given) < gpus:
        raise ValueError(f"{gpus} engines asked, but the job sees only CUDA devices {','.join(given)}")
    return given[:gpus]


def _vllm_worker(device: str, model_path: str, max_model_len: int, enforce_eager: bool, inbox: Any,
                 outbox: Any) -> None:
    """One engine on one GPU: (messages, params, seeds) in, [(text, tokens, truncated)] out."""
    os.environ["CUDA_VISIBLE_DEVICES"] = device
    import traceback

    try:
        from vllm import LLM
        from vllm import SamplingParams as VllmSampling

        llm = LLM(model=model_path, max_model_len=max_model_len, enable_prefix_caching=True,
                  enforce_eager=enforce_eager)
        outbox.put(("ready", None))
    except Exception:
        outbox.put(("error", traceback.format_exc()))
        return
    while True:
        item = inbox.get()
        if item is None:
            return
        messages, params, seeds = item
        try:
            sampling = [
                VllmSampling(
                    temperature=params.temperature,
                    top_p=params.top_p,
                    max_tokens=params.max_new_tokens,
                    seed=s,
                )
                for s in seeds
            ]
            convs = [[{"role": "user", "content": m}] for m in messages]
            outs = llm.chat(convs, sampling, use_tqdm=False)
            outbox.put(
                (
                    "ok",
                    [
                        (
                            o.outputs[0].text,
                            len(o.outputs[0].token_ids),
                            o.outputs[0].finish_reason == "length",
                        )
                        for o in outs
                    ],
                )
            )
        except Exception:
            outbox.put(("error", traceback.format_exc()))


class VLLMGenerator:
    """Data parallel over the node's GPUs: each call's messages are split into one contiguous shard per GPU."""

    name = "vllm"

    def __init__(
        self, model_path: str, gpus: int, max_model_len: int = 32768, start_timeout_s: float = 1800,
        enforce_eager: bool = False,
    ) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # CUDA cannot be forked
        self.workers = []
        for device in worker_devices(os.environ.get("CUDA_VISIBLE_DEVICES"), gpus):
            inbox, outbox = ctx.Queue(), ctx.Queue()
            # Not daemonic: vLLM's LLM() starts its EngineCore as a child process, which Python refuses to a
            # daemonic one ("daemonic processes are not allowed to have children"). close() ends them.
            proc = ctx.Process(
                target=_vllm_worker, args=(device, model_path, max_model_len, enforce_eager, inbox, outbox),
                daemon=False,
            )
            proc.start()
            self.workers.append((proc, inbox, outbox))
        for i, (_, _, outbox) in enumerate(self.workers):
            kind, detail = outbox.get(timeout=start_timeout_s)
            if kind != "ready":
                self.close()
                raise RuntimeError(f"vLLM engine on GPU {i} failed to start:\n{detail}")

    def generate(
        self, messages: Sequence[str], params: SamplingParams, seeds: Sequence[int]
    ) -> list[Generation]:
        n = len(self.workers)
        size = -(-len(messages) // n) if messages else 0
        shards = [(i * size, min((i + 1) * size, len(messages))) for i in range(n)]
        busy = []
        for (lo, hi), (_, inbox, _) in zip(shards, self.workers, strict=True):
            if lo < hi:
                inbox.put((list(messages[lo:hi]), params, list(seeds[lo:hi])))
                busy.append(True)
            else:
                busy.append(False)
        out: list[Generation] = []
        for used, (_, _, outbox) in zip(busy, self.workers, strict=True):
            if not used:
                continue
            kind, detail = outbox.get()
            if kind != "ok":
                raise RuntimeError(f"vLLM generation failed:\n{detail}")
            out += [Generation(t, k, trunc) for t, k, trunc in detail]
        return out

    def close(self) -> None:
        for proc, inbox, _ in self.workers:
            if proc.is_alive():
                inbox.put(None)
        for proc, _, _ in self.workers:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
        self.workers = []


def cuda_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        return 0


def make_generator(backend: str, model_path: str) -> Generator:
    """`auto`: vLLM where it is installed and GPUs are visible, else transformers on CPU."""
    import importlib.util

    gpus = cuda_gpus()
    if backend == "auto":
        backend = "vllm" if gpus and importlib.util.find_spec("vllm") is not None else "transformers"
    if backend == "vllm":
        return VLLMGenerator(model_path, gpus=max(gpus, 1))
    return TransformersGenerator(model_path, device="cuda" if gpus else "cpu")
