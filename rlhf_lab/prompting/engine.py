"""Batched scoring and generation on any causal LM: the two things an evaluation asks of a model.

Both sort their inputs longest first (little padding, and the first batch shows whether memory
suffices) and left-pad, so the positions that matter are the last ones of every row.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from rlhf_lab.models import max_positions


def context_length(model, tokenizer: PreTrainedTokenizerBase, override: int | None = None) -> int:
    """Tokens the model attends over: ``override``, else its config's, else the tokenizer's."""
    return override or max_positions(model.config) or tokenizer.model_max_length


def encode_pair(tokenizer: PreTrainedTokenizerBase, context: str, continuation: str, special_tokens: bool) -> tuple[list[int], list[int]]:
    """Token ids of a context and its continuation, cut from the encoding of the whole text so that
    a token spanning the boundary is tokenised as the model saw it in training. Trailing spaces of
    the context move to the continuation (lm-evaluation-harness's convention)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=special_tokens)["input_ids"]
    context_ids = tokenizer(context, add_special_tokens=special_tokens)["input_ids"]
    return context_ids, whole[len(context_ids) :]


def _left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    input_ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], device=device)  # (B, T)
    attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)  # (B, T)
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)  # (B, T)
    return input_ids, attention_mask, position_ids


@torch.inference_mode()
def loglikelihoods(model, requests: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int) -> list[float]:
    """``sum_t log p(continuation_t | context, continuation_<t)`` for each (context ids, continuation
    ids) request, in input order.

    Requests whose inputs (context + continuation without its last token) are equal share one
    forward pass: the one-token choices " A" .. " D" of a question cost one pass, not four. The LM
    head runs only at the last positions of each row (``logits_to_keep``), where continuations are.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (context, continuation) in enumerate(requests):
        if not context or not continuation:
            raise ValueError(f"request {i}: context and continuation must both have tokens.")
        groups.setdefault(tuple(context + continuation[:-1]), []).append(i)
    inputs = sorted(groups, key=len, reverse=True)
    device = next(model.parameters()).device
    out = [0.0] * len(requests)
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start : start + batch_size]
        keep = max(len(requests[i][1]) for key in batch for i in groups[key])
        input_ids, attention_mask, position_ids = _left_pad([list(k) for k in batch], pad_id, device)
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=keep, use_cache=False).logits  # (B, keep, V)
        logps = logits.float().log_softmax(-1)  # (B, keep, V)
        for row, key in enumerate(batch):
            for i in groups[key]:
                continuation = torch.tensor(requests[i][1], device=device)  # (C,)
                # the last C positions of the row predict the C continuation tokens
                out[i] = logps[row, keep - len(continuation) :].gather(-1, continuation[:, None]).sum().item()
    return out


@torch.inference_mode()
def generate(
    model,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    stop: list[str],
    batch_size: int,
    samples: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
) -> list[list[str]]:
    """``samples`` completions per prompt (token ids), greedy when ``temperature`` is 0, each cut
    before the first stop string; in input order. Seed torch's generator first for sampling."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    device = next(model.parameters()).device
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else dict(do_sample=False)
    out: list[list[str]] = [[] for _ in prompts]
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        input_ids, attention_mask, _ = _left_pad([prompts[i] for i in batch], tokenizer.pad_token_id, device)
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            num_return_sequences=samples,
            stop_strings=list(stop) or None,
            tokenizer=tokenizer,
            pad_token_id=tokenizer.pad_token_id,
            use_cache=True,
            **sampling,
        )  # (B * samples, T + new)
        texts = tokenizer.batch_decode(generated[:, input_ids.shape[1] :], skip_special_tokens=True)
        for j, text in enumerate(texts):
            out[batch[j // samples]].append(cut_at_stop(text, stop))
    return out


def cut_at_stop(text: str, stop: list[str]) -> str:
    for s in stop:
        if s:
            text = text.split(s, 1)[0]
    return text
