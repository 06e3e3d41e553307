"""A tiny Qwen2 causal LM and its tokenizer, built in-process (nothing is downloaded).

Used by the CPU rehearsal (its "distilled" base model) and by tests that need a real Hugging Face model
folder: `save_tiny_model(dir)` writes config + safetensors + tokenizer files that
`AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained` load like any hub model.

The tokenizer is a byte-level BPE like Qwen2's (same pre-tokenizer pattern: digits one by one, so numbers
are spelled digit by digit), trained in milliseconds on a small built-in corpus plus whatever text the
caller adds. Byte-level means every string round-trips through encode/decode exactly, which the strict
`\\boxed{}` reward depends on.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [PAD_TOKEN, IM_START, IM_END]
# Qwen2's chat template, minus tools and system-prompt defaults.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Qwen2's pre-tokenizer split (tokenizer.json of Qwen/Qwen2-1.5B).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_BASE_CORPUS = [
    "Please reason step by step, and put your final answer within \\boxed{}.",
    "What is 12 + 34? The answer is \\boxed{46}. So the final answer is \\boxed{46}.",
    "Compute 7 - 3, 5 * 6 and 8 / 2. Answer: 4, 30, 4.",
    "user assistant system The the a an of to and is in that it for on with as",
    "0123456789 ()[]{}<>=+-*/^_.,;:!?'\"\\ $ % # @ & |",
]


def build_tokenizer(extra_texts: Iterable[str] = (), vocab_size: int = 512) -> Any:
    """A Qwen2-style byte-level BPE tokenizer (a transformers fast tokenizer) with chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([*_BASE_CORPUS, *extra_texts], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        bos_token=None,
        unk_token=None,
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
        padding_side="left",
    )


def tiny_qwen2_config(
    vocab_size: int,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 192,
    max_positions: int = 256,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> Any:
    """A Qwen2 config small enough to train on one CPU core (≈0.1 M parameters at the defaults)."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_positions,
        # Untied like DeepSeek-R1-Distill-Qwen-1.5B: lm_head is its own tensor in every checkpoint.
        tie_word_embeddings=False,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=None,
        use_sliding_window=False,
        dtype="float32",
    )


def build_tiny_model(tokenizer: Any, seed: int = 0, **config_kwargs: Any) -> Any:
    """A randomly initialised tiny Qwen2ForCausalLM matching `tokenizer` (deterministic for a seed)."""
    import torch
    from transformers import GenerationConfig, Qwen2ForCausalLM

    config = tiny_qwen2_config(
        len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **config_kwargs,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=True
    )
    return model


def save_tiny_model(
    out_dir: str | Path,
    tokenizer: Any | None = None,
    model: Any | None = None,
    seed: int = 0,
    **config_kwargs: Any,
) -> Path:
    """Write a Hugging Face model folder (config, safetensors weights, tokenizer, generation config)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    model = model if model is not None else build_tiny_model(tokenizer, seed=seed, **config_kwargs)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
