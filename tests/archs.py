"""Small random-init checkpoints of four model families, each with its own tokenizer quirks, saved
as a user's local checkpoint would be (``config.json``, safetensors, tokenizer files).

The tokenizers are the embedded byte-level BPE (rlhf_lab/assets/tiny) with the special-token
settings of each family:

| family  | BOS added | pad token        | chat template                  | positions            |
|---------|-----------|------------------|--------------------------------|----------------------|
| gpt2    | no        | none (pad = eos) | none                           | 128, learned         |
| llama   | yes       | none (pad = eos) | Llama-3 style, starts with BOS | 256, rotary          |
| qwen2   | no        | its own          | ChatML, eos = <|im_end|> added | 256, rotary          |
| mistral | yes       | its own          | none                           | 256, sliding window  |
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer
from tokenizers.processors import TemplateProcessing
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, MistralConfig, PreTrainedTokenizerFast, Qwen2Config

from rlhf_lab.models import TINY_DIR

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|user|>{{ m['role'] }}\n{{ m['content'] }}<|eos|>{% endfor %}"
    "{% if add_generation_prompt %}<|user|>assistant\n{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def tokenizer(family: str) -> PreTrainedTokenizerFast:
    backend = Tokenizer.from_file(str(TINY_DIR / "tokenizer.json"))
    if family in ("llama", "mistral"):  # BOS in front of every encoded text
        backend.post_processor = TemplateProcessing(single="<|bos|> $A", pair="<|bos|> $A $B", special_tokens=[("<|bos|>", 1)])
    special = {
        "gpt2": dict(bos_token="<|eos|>", eos_token="<|eos|>"),
        "llama": dict(bos_token="<|bos|>", eos_token="<|eos|>", chat_template=LLAMA3_TEMPLATE),
        "qwen2": dict(pad_token="<|pad|>", chat_template=CHATML_TEMPLATE),
        "mistral": dict(bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>"),
    }[family]
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, **special)
    if family == "qwen2":
        tok.add_special_tokens({"eos_token": "<|im_end|>", "additional_special_tokens": ["<|im_start|>"]})
    return tok


def config(family: str, tok: PreTrainedTokenizerFast):
    ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if family == "gpt2":
        return GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=128, **ids)
    if family == "llama":
        return LlamaConfig(max_position_embeddings=256, **SMALL, **ids)
    if family == "qwen2":
        return Qwen2Config(max_position_embeddings=256, **SMALL, **ids)
    return MistralConfig(max_position_embeddings=256, sliding_window=64, **SMALL, **ids)


def build(family: str, out_dir: Path, seed: int = 0) -> Path:
    """A random-init ``family`` checkpoint and its tokenizer in ``out_dir``."""
    tok = tokenizer(family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config(family, tok))
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


FAMILIES = ("gpt2", "llama", "qwen2", "mistral")
