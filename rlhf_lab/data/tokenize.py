"""Turn validated rows into token sequences.

A *sequence* is ``{"input_ids": [...], "labels": [...]}`` with ``labels == -100`` on tokens that
are not scored (the prompt), both ``array("i")`` (compact int32; the collators take lists too, so a
plugin's ``encode`` may return either). The Encoder's sequences are ``Sequence`` dicts that also
remember their row and whether they were cut: the tokenised table (``data/table.py``) reads both to
tell which row each feature came from. Prompts go through the tokenizer's chat template when it has
one (``data.chat_template=auto``); completions end with EOS; a ``text`` row is all completion.
Sequences longer than ``data.max_length`` are cut at the end of the completion (counted) or
rejected (``data.on_overflow=error``); a row whose prompt alone fills it gives no sequence.
"""

from __future__ import annotations

from array import array
from itertools import combinations
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from rlhf_lab.data.sources import ranked_responses
from rlhf_lab.errors import DataError

IGNORE = -100


class Sequence(dict):
    """``{"input_ids", "labels"}`` plus, as attributes that copying drops, the row it was made from
    (``row``) and whether its completion was cut to fit ``max_length`` (``truncated``)."""

    __slots__ = ("row", "truncated")

    def __init__(self, input_ids: array, labels: array, row: dict, truncated: bool):
        super().__init__(input_ids=input_ids, labels=labels)
        self.row, self.truncated = row, truncated


def origin(row: dict) -> str:
    """Where a row came from, for messages: '<file or dataset> row <n>'."""
    return f"{row.get('_source', 'data')} row {row.get('_row', '?')}"


class Encoder:
    """``chat_template``: ``auto`` (the tokenizer's, when it has one), ``never`` (prompts as plain
    text), or a Jinja chat template, inline or as a file path (TRL's ``chat_template_path``): it is
    set on the tokenizer, so the exported model carries it. Chat rows (message lists) need a
    template; without one they are an error that says so, never turns joined without their roles."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int, chat_template: str = "auto", on_overflow: str = "truncate"):
        if chat_template not in ("auto", "never"):
            path = Path(chat_template)
            tokenizer.chat_template = path.read_text() if "{" not in chat_template and path.is_file() else chat_template
            if "{" not in tokenizer.chat_template:
                raise DataError(f"data.chat_template={chat_template}: not a file, nor a Jinja template "
                                "(auto, never, a template or its path).")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.use_chat = chat_template != "never" and getattr(tokenizer, "chat_template", None) is not None
        self.on_overflow = on_overflow

    def _chat_needed(self, row: dict | None) -> DataError:
        why = "data.chat_template=never" if getattr(self.tokenizer, "chat_template", None) else "the tokenizer has no chat template"
        return DataError(
            f"{origin(row) if row else 'a prompt'}: chat turns (role/content messages) need a chat template, and {why}: "
            "set data.chat_template to a Jinja template or a .jinja file, or give the rows as text (prompt/completion, text)."
        )

    def prompt_texts(self, prompts: list, rows: list[dict] | None = None) -> list[str]:
        """Prompt strings exactly as the model sees them before its answer (used by generation too)."""
        out = []
        for i, prompt in enumerate(prompts):
            if self.use_chat:
                messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
                out.append(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
            elif isinstance(prompt, list):
                raise self._chat_needed(rows[i] if rows else None)
            else:
                out.append(prompt)
        return out

    def prompt_ids(self, prompts: list, rows: list[dict] | None = None) -> list[list[int]]:
        texts = self.prompt_texts(prompts, rows)
        return self.tokenizer(texts, add_special_tokens=not self.use_chat)["input_ids"] if texts else []

    def completion_ids(self, completions: list, prompts: list | None = None, rows: list[dict] | None = None) -> list[list[int]]:
        """Token ids of each answer, ended by EOS. An answer is text, or chat turns after its
        prompt: the last one the assistant's answer, any before it (a dialogue that parts before
        its last turn) written by the chat template between the prompt and that answer."""
        texts = []
        for i, c in enumerate(completions):
            if isinstance(c, str):
                texts.append(c)
            elif len(c) == 1:
                texts.append(c[-1]["content"])
            elif not self.use_chat:
                raise self._chat_needed(rows[i] if rows else None)
            else:
                prompt = prompts[i] if isinstance(prompts[i], list) else [{"role": "user", "content": prompts[i]}]
                before = self.prompt_texts([prompt])[0]
                turns = self.tokenizer.apply_chat_template(prompt + c[:-1], add_generation_prompt=True, tokenize=False)
                if not turns.startswith(before):
                    raise DataError(f"{origin(rows[i]) if rows else 'an answer'}: the chat template does not write the prompt's turns "
                                    "the same way with the answer's turns after them; cannot tell the answer's tokens apart.")
                texts.append(turns[len(before) :] + c[-1]["content"])
        eos = [self.tokenizer.eos_token_id]
        return [ids + eos for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []

    def sequence(self, prompt: list[int], completion: list[int], row: dict) -> Sequence | None:
        """Prompt + completion with the prompt masked; None when nothing of the completion fits."""
        overflow = len(prompt) + len(completion) - self.max_length
        if overflow > 0:
            if self.on_overflow == "error":
                raise DataError(
                    f"{origin(row)}: {len(prompt) + len(completion)} tokens exceed data.max_length={self.max_length} "
                    "(set data.on_overflow=truncate to cut it)."
                )
            if len(prompt) >= self.max_length:
                return None
            completion = completion[: len(completion) - overflow]
        return Sequence(array("i", prompt + completion), array("i", [IGNORE] * len(prompt) + completion), row, overflow > 0)

    def sft(self, rows: list[dict]) -> list[dict]:
        """One sequence per row: the prompt (or all turns before the last) then the answer; a
        ``text`` row is trained on all its tokens (continued pre-training)."""
        is_text = [r.get("messages") is None and r.get("prompt") is None for r in rows]
        chats = [r for r, text in zip(rows, is_text) if not text]
        texts = [r for r, text in zip(rows, is_text) if text]
        prompts = [r["messages"][:-1] if r.get("messages") else r["prompt"] for r in chats]
        answers = [r["messages"][-1]["content"] if r.get("messages") else r["completion"] for r in chats]
        chat_seqs = iter([self.sequence(p, c, r) for r, p, c in zip(chats, self.prompt_ids(prompts, chats), self.completion_ids(answers))])
        eos = self.tokenizer.eos_token_id
        text_ids = self.tokenizer([r["text"] for r in texts])["input_ids"] if texts else []  # with BOS where the model has one
        text_seqs = iter([self.sequence([], ids if ids[-1:] == [eos] else ids + [eos], r) for r, ids in zip(texts, text_ids)])
        sequences = [next(text_seqs) if text else next(chat_seqs) for text in is_text]
        return [{"sequences": [seq]} for seq in sequences if seq is not None]

    def preference(self, rows: list[dict]) -> list[dict]:
        """Two sequences per pair, chosen then rejected, sharing the prompt tokens; a ranked row
        of k responses gives all its k(k-1)/2 pairs."""
        features = []
        for ranked in self.ranking(rows):
            seqs = ranked["sequences"]
            features += [{"sequences": [seqs[i], seqs[j]]} for i, j in combinations(range(len(seqs)), 2)]
        return features

    def ranking(self, rows: list[dict]) -> list[dict]:
        """One feature per preference row: its k responses best first (chosen, rejected for a pair),
        sharing the prompt tokens, so that each response is scored once."""
        prompts = self.prompt_ids([r["prompt"] for r in rows], rows)
        responses = [ranked_responses(r) for r in rows]
        flat = [(r, c) for r, rs in zip(rows, responses) for c in rs]
        completions = iter(self.completion_ids([c for _, c in flat], [r["prompt"] for r, _ in flat], [r for r, _ in flat]))
        features = []
        for row, p, rs in zip(rows, prompts, responses):
            seqs = [self.sequence(p, next(completions), row) for _ in rs]
            if None not in seqs:
                features.append({"sequences": seqs})
        return features
