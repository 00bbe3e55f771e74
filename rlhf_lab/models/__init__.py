"""Model loading: the embedded tiny model, any Hugging Face causal LM (hub id or local directory),
optional LoRA, and an atomic ``save_pretrained`` export.

Objectives receive a ``ModelFactory`` and ask it for what they need (policy, frozen reference, a
reward model to train, a critic), so loading stays in one place and an objective never reads files itself.
"""

from __future__ import annotations

import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from rlhf_lab.config import ModelConfig
from rlhf_lab.errors import ConfigError

log = logging.getLogger(__name__)
TINY_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class _PackedRowsCarryNoMask(logging.Filter):
    """Drops transformers' "We strongly recommend passing in an `attention_mask` since your input_ids
    may be padded", which it logs when a forward gets no mask and the pad id is a row's first or
    last token. Padding-free rows carry no mask by design (position ids tell their sequences apart,
    ``rlhf_lab.models.lm.packs_exactly``), a GPT-2's pad is its EOS, which ends every completion, and
    every padded batch here carries its mask: in a run of this lab the warning is always a false alarm."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "passing in an `attention_mask`" not in record.getMessage()


logging.getLogger("transformers.modeling_utils").addFilter(_PackedRowsCarryNoMask())


def _location(cfg: ModelConfig) -> str:
    if cfg.source == "tiny":
        return str(TINY_DIR)
    return cfg.name_or_path  # source=hf


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    location = _location(cfg)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except OSError as exc:  # a hub id that the hub (or its cache, offline) cannot provide
        reason = str(exc).strip().splitlines()[0]
        raise ConfigError(f"model.name_or_path={location}: not a local model directory, and the hub could not provide it ({reason})") from exc
    if tokenizer.pad_token is None:
        # Decoder-only checkpoints often ship without a pad token; padding is masked out anyway.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def max_positions(config) -> int | None:
    """The longest sequence a model's config declares it can attend over (its position table), if any."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for attr in ("max_position_embeddings", "n_positions", "n_ctx"):
        if isinstance(getattr(config, attr, None), int) and getattr(config, attr) > 0:
            return getattr(config, attr)
    return None


def fit_to_context(max_length: int, cfg: ModelConfig) -> int:
    """``data.max_length`` cut to the configured model's context: a model with learned positions
    (GPT-2) fails with an IndexError on longer sequences, and rotary ones never saw them."""
    location = _location(cfg)
    context = max_positions(AutoConfig.from_pretrained(location, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code))
    if context is None or max_length <= context:
        return max_length
    log.info("data.max_length=%d is longer than the %d positions of model %s: sequences are cut at %d tokens.",
             max_length, context, location, context)
    return context


def _dtype(cfg: ModelConfig) -> torch.dtype:
    return DTYPES[cfg.dtype]


def quiet_progress_bars() -> None:
    """transformers' own progress bars ("Loading weights", "Writing model shards") off: a run shows
    its own progress. transformers' switch turns the hub's download bars off too; they stay as they were."""
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging as hf_logging

    downloads_shown = not are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    if downloads_shown:
        enable_progress_bars()


def _load(auto_cls, cfg: ModelConfig, **config_overrides) -> PreTrainedModel:
    """``auto_cls`` on the configured weights: tiny (seeded random init) or pretrained."""
    quiet_progress_bars()
    kwargs = {"dtype": _dtype(cfg)}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if cfg.source == "tiny":
        config = AutoConfig.from_pretrained(TINY_DIR, **config_overrides)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.init_seed)
            model = auto_cls.from_config(config, **kwargs)
    else:
        model = auto_cls.from_pretrained(
            _location(cfg), revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, **config_overrides, **kwargs
        )
    if cfg.fused_activations:
        fuse_activations(model)
    if cfg.gradient_checkpointing:
        enable_checkpointing(model, cfg.gradient_checkpointing_every)
    return model.eval()  # as from_pretrained leaves it; ModelFactory puts the models it trains in train mode


class TanhGELU(torch.nn.Module):
    """GELU's tanh approximation as torch's one kernel, ``F.gelu(x, approximate="tanh")``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(x, approximate="tanh")


def fuse_activations(model: torch.nn.Module) -> int:
    """Run transformers' ``gelu_new`` and ``gelu_fast`` (GPT-2, GPT-J, GPT-Neo, CodeGen, Phi...) as
    torch's tanh GELU, the same function in one kernel (outputs within 3e-7 in fp32; in bf16 it rounds
    once instead of at each of its seven operations), and return how many modules were replaced.

    transformers writes them as seven element-wise operations, and autograd keeps the input of four:
    four tensors of the MLP's width (4x the model's) a token and layer, where the kernel keeps one:
    12 hidden-sized values a token and layer fewer. GPT-2 small's reward model (batch 16, max_length
    512) trained 1.3-1.4x faster with it, at 3-5% less peak memory (benchmarks/RESULTS.md).
    ``model.fused_activations=false`` keeps them as written."""
    from transformers.activations import FastGELUActivation, NewGELUActivation

    replaced = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) in (NewGELUActivation, FastGELUActivation):
                setattr(module, name, TanhGELU())
                replaced += 1
    if replaced:
        log.info("%s: %d gelu_new/gelu_fast activations run as torch's one-kernel tanh GELU, the same function "
                 "(model.fused_activations=false: as written)", type(model).__name__, replaced)
    return replaced


def enable_checkpointing(model: PreTrainedModel, every: int = 1) -> None:
    """Gradient (activation) checkpointing of every ``every``-th decoder layer, non-reentrant."""
    kwargs = {"use_reentrant": False}
    if every < 1:
        raise ConfigError(f"model.gradient_checkpointing_every must be >= 1, got {every}.")
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, every_n_layers=every)
    elif every == 1:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise ConfigError("model.gradient_checkpointing_every > 1 needs a transformers version with activation_checkpointing_enable.")
    model.config.use_cache = False


def load_causal_lm(cfg: ModelConfig, *, lora: bool = True) -> PreTrainedModel:
    """The policy as configured: tiny (seeded random init) or pretrained weights, plus LoRA if asked."""
    model = _load(AutoModelForCausalLM, cfg)
    if lora and cfg.lora.r > 0:
        model = apply_lora(model, cfg)
    return model


def load_scalar_head_model(cfg: ModelConfig, pad_token_id: int) -> PreTrainedModel:
    """A scalar head (``AutoModelForSequenceClassification``, one label) on the configured causal-LM
    backbone, plus LoRA if asked (the head is then trained in full): a reward model to train, or a
    critic. ``pad_token_id`` is stored in its config: the exported model reads the reward at the
    last token that is not padding."""
    model = _load(AutoModelForSequenceClassification, cfg, num_labels=1, pad_token_id=pad_token_id)
    if cfg.lora.r > 0:
        model = apply_lora(model, cfg, task_type="SEQ_CLS")
    return model


def apply_lora(model: PreTrainedModel, cfg: ModelConfig, task_type: str = "CAUSAL_LM"):
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError("model.lora.r > 0 needs peft: pip install 'rlhf_lab[lora]'.") from None
    targets = cfg.lora.target_modules
    peft_cfg = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=targets[0] if list(targets) == ["all-linear"] else list(targets),
        task_type=task_type,  # SEQ_CLS also trains and saves the new score head in full
    )
    return get_peft_model(model, peft_cfg)


def disable_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Every dropout probability to 0 (objectives that compare a model with itself, as TRL does):
    ``nn.Dropout`` modules and the attention dropout rate that attention layers keep as a float."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        elif isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
    return model


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in eval mode (no dropout) for the block, then back in the mode it was in."""
    training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(training)


def frozen(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


class ModelFactory:
    """Builds the models an objective asks for, from the ``model`` config."""

    def __init__(self, cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, reward: Callable[[], Any] | None = None):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self._reward = reward  # builds the run's reward source (rlhf_lab.rewards.build_reward)

    def policy(self) -> PreTrainedModel:
        """The trainable policy, in train mode (Lightning keeps each submodule's mode; train mode is what
        makes dropout and gradient checkpointing apply, as in any trainer)."""
        return load_causal_lm(self.cfg).train()

    def reference(self) -> PreTrainedModel:
        """A frozen copy of the initial policy (without LoRA)."""
        return frozen(load_causal_lm(self.cfg, lora=False))

    def trainable_reward_model(self) -> PreTrainedModel:
        """A reward model to train (``objective=rm``): a scalar head on the ``model`` backbone (see
        ``load_scalar_head_model``), in train mode."""
        return load_scalar_head_model(self.cfg, self.tokenizer.pad_token_id).train()

    def critic(self) -> PreTrainedModel:
        """PPO's value model V(s_t): a scalar head on the ``model`` backbone, in train mode, whose head
        starts at zero (V = 0 until it learns: a random head's noise would swamp the first advantages)."""
        model = load_scalar_head_model(self.cfg, self.tokenizer.pad_token_id).train()
        torch.nn.init.zeros_(unwrap(model).score.weight)
        return model

    def reward(self):
        """The reward source of online RL (``reward=<name>``): an ``rlhf_lab.rewards.Reward``."""
        if self._reward is None:
            raise ConfigError("this run has no reward source: build ModelFactory with reward=...")
        return self._reward()


def unwrap(model):
    """The plain transformers model under a peft wrapper (LoRA layers stay in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def export_pretrained(model, tokenizer: PreTrainedTokenizerBase, out_dir: Path, state_dict: dict | None = None) -> Path:
    """``save_pretrained`` (safetensors) into ``out_dir`` atomically: write beside it, then rename.

    LoRA adapters are merged so that plain ``AutoModelForCausalLM.from_pretrained`` loads the result.
    ``state_dict`` replaces the model's own (the full weights gathered from an FSDP-sharded model).
    An ``out_dir`` already there is an export of the same run that died before its summary (a new
    run never reuses a directory): the new copy takes its place, so the end of a run can run again.
    """
    quiet_progress_bars()
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if hasattr(model, "merge_and_unload"):
            import copy

            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        old = out_dir.with_name(f".{out_dir.name}.old.tmp-{os.getpid()}")
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
