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


def test_gpt2s_gelu_runs_as_one_kernel_with_the_same_loss_and_gradients(arch_dir):
    """GPT-2's ``gelu_new`` (seven element-wise operations, four of whose inputs autograd keeps) runs
    as torch's tanh GELU: the same loss and gradients to float rounding, a quarter of the MLP's saved
    activations, and the written form back with ``model.fused_activations=false``."""
    from transformers.activations import NewGELUActivation

    from rlhf_lab.models import TanhGELU
    from rlhf_lab.objectives.base import activation_bytes_per_token

    path = str(arch_dir("gpt2"))
    fused = load_causal_lm(ModelConfig(source="hf", name_or_path=path)).train()
    written = load_causal_lm(ModelConfig(source="hf", name_or_path=path, fused_activations=False)).train()
    assert [type(m.mlp.act) for m in fused.transformer.h] == [TanhGELU, TanhGELU]
    assert [type(m.mlp.act) for m in written.transformer.h] == [NewGELUActivation, NewGELUActivation]
    ids = torch.randint(0, fused.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    losses = []
    for model in (fused, written):
        torch.manual_seed(0)  # the same dropout masks
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        losses.append(loss)
    assert torch.allclose(losses[0], losses[1], rtol=1e-6), losses
    for (name, a), b in zip(fused.named_parameters(), written.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-7), name
    # per token and layer: 3 of the 4 inputs the written form keeps, each 4 x n_embd floats, no longer held
    saved = {m: activation_bytes_per_token(m, 32, packed=False) for m in (fused, written)}
    assert saved[written] - saved[fused] == pytest.approx(3 * 4 * 64 * 4 * 2, rel=0.05), saved


def test_activations_other_than_gelu_new_are_left_as_written(arch_dir):
    """Llama's SiLU is one kernel already: nothing is replaced."""
    path = str(arch_dir("llama"))
    default = load_causal_lm(ModelConfig(source="hf", name_or_path=path))
    written = load_causal_lm(ModelConfig(source="hf", name_or_path=path, fused_activations=False))
    assert [type(m) for m in default.modules()] == [type(m) for m in written.modules()]
