"""Loading from a local directory (as from the hub), LoRA, and the atomic safetensors export."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhf_lab.config import LoraConfig, ModelConfig
from rlhf_lab.errors import ConfigError
from rlhf_lab.models import export_pretrained, load_causal_lm, load_tokenizer


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


def test_unknown_dtype_is_a_config_error():
    with pytest.raises(ConfigError, match="model.dtype"):
        load_causal_lm(ModelConfig(dtype="float8"))


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


def test_export_never_overwrites(tmp_path, tiny_tokenizer):
    model = load_causal_lm(ModelConfig())
    export_pretrained(model, tiny_tokenizer, tmp_path / "m")
    with pytest.raises(FileExistsError):
        export_pretrained(model, tiny_tokenizer, tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary left behind


def test_gradient_checkpointing_flag():
    assert load_causal_lm(ModelConfig(gradient_checkpointing=True)).is_gradient_checkpointing
