"""Loading from a local directory (as from the hub), LoRA, and the atomic safetensors export."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhf_lab.config import LoraConfig, ModelConfig
from rlhf_lab.errors import ConfigError
from rlhf_lab.models import ModelFactory, disable_dropout, export_pretrained, load_causal_lm, load_tokenizer


def test_hf_source_loads_a_local_directory(tiny_model_dir):
    hf = load_causal_lm(ModelConfig(source="hf", name_or_path=str(tiny_model_dir)))
    tiny = load_causal_lm(ModelConfig())
    for (name, a), (_, b) in zip(hf.state_dict().items(), tiny.state_dict().items()):
        assert torch.equal(a, b), name
    assert load_tokenizer(ModelConfig(source="hf", name_or_path=str(tiny_model_dir))).eos_token == "<|eos|>"


def test_tiny_init_is_seeded():
    a, b = load_causal_lm(ModelConfig(init_seed=1)), load_causal_lm(ModelConfig(init_seed=2))
    assert torch.equal(a.lm_head.weight, load_causal_lm(ModelConfig(init_seed=1)).lm_head.weight)
    assert not torch.equal(a.lm_head.weight, b.lm_head.weight)


def test_lora_trains_adapters_only_and_exports_merged(tmp_path, tiny_tokenizer):
    model = load_causal_lm(ModelConfig(lora=LoraConfig(r=4)))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.1)  # make the adapter matter
    model.eval()  # LoRA dropout off
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    out = export_pretrained(model, tiny_tokenizer, tmp_path / "model")
    assert (out / "model.safetensors").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, expected, atol=1e-5)


def test_export_again_swaps_the_new_copy_in(tmp_path, tiny_tokenizer):
    """The end of a resumed run exports again over its own earlier export (a new run never reuses a directory)."""
    first, second = (load_causal_lm(ModelConfig(init_seed=seed)) for seed in (1, 2))
    export_pretrained(first, tiny_tokenizer, tmp_path / "m")
    export_pretrained(second, tiny_tokenizer, tmp_path / "m")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").state_dict()
    assert all(torch.equal(v, second.state_dict()[k]) for k, v in reloaded.items())
    assert not all(torch.equal(v, first.state_dict()[k]) for k, v in reloaded.items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary left behind


def saved_activations(model, ids) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one forward."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t, lambda t: t):
        model(input_ids=ids).logits.sum().backward()
    return sum(saved)


def test_trained_models_are_in_train_mode_and_checkpointing_applies_to_hub_checkpoints(tiny_model_dir, tiny_tokenizer):
    """from_pretrained returns a model in eval mode, and Lightning keeps submodules' modes: the factory
    must put what it trains in train mode, or gradient checkpointing (and dropout) silently never run."""
    ids = torch.randint(0, 512, (4, 64))

    def build(**kwargs):
        return ModelFactory(ModelConfig(source="hf", name_or_path=str(tiny_model_dir), **kwargs), tiny_tokenizer)

    plain, every_layer, every_2nd = (build().policy(), build(gradient_checkpointing=True).policy(),
                                     build(gradient_checkpointing=True, gradient_checkpointing_every=2).policy())
    assert plain.training and build().trainable_reward_model().training
    assert not build().reference().training and not load_causal_lm(ModelConfig()).training  # inference: eval mode
    full, checkpointed, half = saved_activations(plain, ids), saved_activations(every_layer, ids), saved_activations(every_2nd, ids)
    assert checkpointed < half < full
    with pytest.raises(ConfigError, match="gradient_checkpointing_every"):
        build(gradient_checkpointing=True, gradient_checkpointing_every=0).policy()


def test_disable_dropout_covers_modules_and_attention_rates(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attention_dropout=0.5).train()
    model.model.embed_dropout = torch.nn.Dropout(0.5)  # an nn.Dropout module as well
    ids = torch.randint(0, 512, (2, 16))
    torch.manual_seed(0)
    assert not torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)  # dropout is live in train mode
    disable_dropout(model)
    assert model.model.embed_dropout.p == 0.0 and model.model.layers[0].self_attn.attention_dropout == 0.0
    assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)
