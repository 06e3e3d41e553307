"""The rollout of the CPU backend: a transformers model served as a Ray actor, token in, token out.

What verl's agent loop asks of a rollout server, and what vLLM does for it on a GPU: `generate(prompt_ids,
sampling_params, request_id)` → TokenOutput (response ids, their log-probs, stop reason), sampling with
temperature, top-p and top-k (temperature 0 = greedy), stopping at EOS or the length budget; the
lifecycle calls (sleep, wake_up, abort, resume, kv-cache release) as no-ops; and new weights after every
update. Concurrent requests are batched (left padding, one KV cache), as vLLM would, so a step of
prompts × n samples costs about one forward pass per new token.

Three pieces, as in verl's own rollouts:
- `HFReplica` (verl's `RolloutReplica`): launches one server per replica on the node of its first
  trainer worker (hybrid mode, what the legacy trainer uses);
- `HFServer` (the Ray actor): the model and the sampler;
- `HFServerAdapter` (verl's `BaseRollout`, inside each trainer worker): receives the trainer's weights
  from verl's naive checkpoint-engine path every step and hands them to its replica's server.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import ray
import torch
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutMode, RolloutReplica, TokenOutput

logger = logging.getLogger(__name__)

# Requests arriving within this window are generated as one batch.
_GATHER_S = 0.01


def server_name(replica_rank: int, suffix: str = "") -> str:
    return f"hf_cpu_server_{replica_rank}{suffix}"


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, top_k: int,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row and its log-probability under logits / temperature (what verl's actor computes
    for the same token; top-k/top-p only decide what may be drawn). temperature 0 is greedy."""
    logits = logits.float()
    if temperature <= 0:
        logp = torch.log_softmax(logits, dim=-1)
        token = logits.argmax(dim=-1)
        return token, logp.gather(-1, token[:, None])[:, 0]
    scaled = logits / temperature
    logp = torch.log_softmax(scaled, dim=-1)
    masked = scaled.clone()
    if top_k is not None and 0 < top_k < masked.shape[-1]:
        kth = torch.topk(masked, top_k, dim=-1).values[:, -1:]
        masked[masked < kth] = float("-inf")
    if top_p is not None and 0 < top_p < 1:
        order = torch.sort(masked, dim=-1, descending=True)
        probs = torch.softmax(order.values, dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        drop = probs.cumsum(-1) - probs > top_p
        sorted_masked = order.values.masked_fill(drop, float("-inf"))
        masked = torch.full_like(masked, float("-inf")).scatter(-1, order.indices, sorted_masked)
    token = torch.multinomial(torch.softmax(masked, dim=-1), 1, generator=generator)[:, 0]
    return token, logp.gather(-1, token[:, None])[:, 0]


class HFServer:
    """One replica's model. A Ray actor (async methods; `max_concurrency` set by the replica)."""

    def __init__(self, config: Any, model_config: Any, replica_rank: int) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from verl.utils.config import omega_conf_to_dataclass
        from verl.workers.config import HFModelConfig, RolloutConfig

        self.config = omega_conf_to_dataclass(config, dataclass_type=RolloutConfig)
        self.model_config = omega_conf_to_dataclass(model_config, dataclass_type=HFModelConfig)
        self.replica_rank = replica_rank
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
        path = self.model_config.local_path
        attn = (self.model_config.override_config or {}).get("attn_implementation", "sdpa")
        self.model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32, attn_implementation=attn)
        self.model.eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
        self.eos = _eos_ids(self.model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.generator = torch.Generator().manual_seed(int(getattr(self.config, "seed", 0) or 0) + replica_rank)
        self.global_steps: int | None = None
        self.weight_updates = 0
        self._pending: list[tuple[list[int], dict[str, Any], asyncio.Future[TokenOutput]]] = []
        self._drainer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    # -- generation -----------------------------------------------------------------------------------

    def _budget(self, prompt_len: int, params: dict[str, Any]) -> int:
        for key in ("max_tokens", "max_new_tokens"):
            if key in params:
                return max(1, int(params.pop(key)))
        cfg = self.config
        return max(1, min(cfg.response_length, cfg.prompt_length + cfg.response_length - prompt_len))

    async def generate(self, prompt_ids: list[int], sampling_params: dict[str, Any], request_id: str,
                       image_data: Any = None, video_data: Any = None, **kwargs: Any) -> TokenOutput:
        if image_data or video_data or kwargs.get("audio_data"):
            raise NotImplementedError("the CPU rollout serves text models only")
        params = dict(sampling_params)
        params["max_tokens"] = self._budget(len(prompt_ids), params)
        future: asyncio.Future[TokenOutput] = asyncio.get_running_loop().create_future()
        self._pending.append((list(prompt_ids), params, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            await asyncio.sleep(_GATHER_S)
            batch, self._pending = self._pending, []
            groups: dict[tuple[Any, ...], list[tuple[list[int], dict[str, Any], asyncio.Future[TokenOutput]]]] = {}
            for item in batch:
                p = item[1]
                key = (float(p.get("temperature", 1.0)), float(p.get("top_p", 1.0)), int(p.get("top_k", -1)),
                       bool(p.get("logprobs", False)))
                groups.setdefault(key, []).append(item)
            for (temperature, top_p, top_k, want_lp), items in groups.items():
                try:
                    async with self._lock:
                        outs = await asyncio.to_thread(
                            self._generate_batch, [i[0] for i in items], [i[1]["max_tokens"] for i in items],
                            temperature, top_p, top_k)
                except Exception as exc:  # noqa: BLE001 - every waiting request hears of it
                    for _, _, fut in items:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_, _, fut), (tokens, lps) in zip(items, outs, strict=True):
                    if not fut.done():
                        fut.set_result(TokenOutput(token_ids=tokens, log_probs=lps if want_lp else None,
                                                   stop_reason="completed",
                                                   extra_fields={"global_steps": self.global_steps}))

    @torch.no_grad()
    def _generate_batch(self, prompts: list[list[int]], budgets: list[int], temperature: float, top_p: float,
                        top_k: int) -> list[tuple[list[int], list[float]]]:
        n, width = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1]
        tokens: list[list[int]] = [[] for _ in range(n)]
        logps: list[list[float]] = [[] for _ in range(n)]
        done = [False] * n
        for _ in range(max(budgets)):
            nxt, lp = sample_next(logits, temperature, top_p, top_k, self.generator)
            for i in range(n):
                if done[i]:
                    continue
                tok = int(nxt[i])
                tokens[i].append(tok)
                logps[i].append(float(lp[i]))
                if tok in self.eos or len(tokens[i]) >= budgets[i]:
                    done[i] = True
            if all(done):
                break
            mask = torch.cat([mask, torch.ones((n, 1), dtype=torch.long)], dim=1)
            pos = pos[:, -1:] + 1
            out = self.model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos,
                             past_key_values=past, use_cache=True)
            past, logits = out.past_key_values, out.logits[:, -1]
        return list(zip(tokens, logps, strict=True))

    # -- weights --------------------------------------------------------------------------------------

    async def update_weights(self, state: dict[str, torch.Tensor], global_steps: int | None = None) -> int:
        async with self._lock:
            own = self.model.state_dict()
            unknown = sorted(set(state) - set(own))
            if unknown:
                raise KeyError(f"weights the rollout model does not have: {unknown[:5]}")
            self.model.load_state_dict(state, strict=False)
            self.weight_updates += 1
            if global_steps is not None:
                self.global_steps = global_steps
        return len(state)

    async def set_global_steps(self, global_steps: int) -> None:
        self.global_steps = global_steps

    # Lifecycle calls verl makes on every rollout server: nothing to free or restore on a CPU.
    async def wake_up(self) -> None: ...
    async def sleep(self) -> None: ...
    async def abort_all_requests(self, reject_request: bool = False) -> None: ...
    async def resume_generation(self) -> None: ...
    async def clear_kv_cache(self) -> None: ...
    async def release_kv_cache(self) -> None: ...
    async def resume_kv_cache(self) -> None: ...
    async def start_profile(self, **kwargs: Any) -> None: ...
    async def stop_profile(self) -> None: ...


class HFReplica(RolloutReplica):
    """verl's replica for `rollout.name=hf-cpu`: one server on the node of the replica's first worker."""

    def rollout_worker_use_gpu(self) -> bool:
        return False

    async def launch_servers(self) -> None:
        if self.rollout_mode != RolloutMode.HYBRID:
            raise NotImplementedError(
                f"the CPU rollout runs in hybrid mode (the legacy trainer's); got {self.rollout_mode}"
            )
        if self.nnodes != 1:
            raise NotImplementedError("the CPU rollout serves a replica from one node (tensor_model_parallel_size=1)")
        node_id = await self.workers[0].__ray_call__.remote(lambda _self: ray.get_runtime_context().get_node_id())
        name = server_name(self.replica_rank, self.name_suffix)
        server = ray.remote(HFServer).options(
            scheduling_strategy=ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
            name=name,
            num_cpus=0,
            max_concurrency=self.max_concurrency,
        ).remote(self.config, self.model_config, self.replica_rank)
        await server.set_global_steps.remote(None)  # waits until the model is loaded
        self.servers.append(server)
        self._server_handle = server
        # verl keys its load balancer by this address; nothing listens on it (token in/out goes over Ray).
        self._server_address = f"ray-actor:{name}"


class HFServerAdapter(BaseRollout):
    """In every trainer worker: passes each step's weights from verl's FSDP engine to its server."""

    def __init__(self, config: Any, model_config: Any, device_mesh: Any, replica_rank: int = -1) -> None:
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ.get("RANK", "0"))
        c = self.config
        per_replica = c.tensor_model_parallel_size * c.data_parallel_size * c.pipeline_model_parallel_size
        self.replica_rank = rank // per_replica if replica_rank == -1 else replica_rank
        self.rollout_rank = rank % per_replica
        self._server: Any = None

    def _handle(self) -> Any:
        if self._server is None:
            self._server = ray.get_actor(server_name(self.replica_rank))
        return self._server

    async def resume(self, tags: list[str]) -> None:
        return None

    async def release(self) -> None:
        return None

    async def update_weights(self, weights: Any, wire_format: str = "named_tensors", **kwargs: Any) -> None:
        if wire_format != "named_tensors":
            raise NotImplementedError(f"the CPU rollout takes full named tensors, not {wire_format!r}")
        # Every rank consumes the generator: producing each tensor may be a collective (FSDP all-gather).
        state = {name: tensor.detach().to("cpu").clone() for name, tensor in weights}
        if self.rollout_rank == 0:
            await self._handle().update_weights.remote(state, kwargs.get("global_steps"))
