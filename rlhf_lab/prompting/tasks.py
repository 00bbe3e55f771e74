"""Evaluation tasks: rows mapped onto documents, and how a document reads as a question or target.

``eval.fields`` maps the canonical fields onto a source's columns:

- ``question`` (always; a ``prompt`` column, as in rlhf_lab's prompt rows, serves too), ``answer`` (generation: the gold answer, or ``<steps> <answer_split>
  <answer>`` when ``eval.answer_split`` is set, as in GSM8K), ``rationale`` (optional: worked steps)
- ``choices`` (multiple choice: a list of texts) and ``label`` (the gold choice: an index, or one of
  ``eval.choice_labels``)
- ``text`` (``loglikelihood_rolling``: the held-out text whose log-likelihood is scored, as it is)
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from omegaconf import OmegaConf

from rlhf_lab.config import EvalConfig, SourceConfig
from rlhf_lab.data.sources import load_source
from rlhf_lab.errors import ConfigError, DataError

ROLLING = "loglikelihood_rolling"  # perplexity of held-out text (lm-evaluation-harness's output type of that name)


@dataclass
class Doc:
    question: str  # loglikelihood_rolling: the text
    answer: str  # gold answer; multiple choice: the gold choice as scored (its label or its text)
    rationale: str | None = None  # worked steps, for chain-of-thought exemplars
    choices: list[str] = field(default_factory=list)  # multiple choice: the choices' texts
    label: int | None = None  # multiple choice: index of the gold choice
    row: dict = field(default_factory=dict)  # every column of the source row, for templates


class Task:
    """The documents of one task, its exemplar pool, and its prompt templates."""

    def __init__(self, cfg: EvalConfig, docs: list[Doc], pool: list[Doc] | None):
        self.cfg = cfg
        self.name = cfg.name
        self.kind = cfg.kind
        self.docs = docs
        self.pool = pool  # None: exemplars come from `docs`, never the document being asked

    @classmethod
    def from_rows(cls, rows: list[dict], **options) -> Task:
        """A task over in-memory rows (for tests): ``options`` are ``eval`` fields (``question_template``, ...)."""
        cfg = OmegaConf.merge(OmegaConf.structured(EvalConfig), options)
        return cls(cfg, [to_doc({"_source": "rows", "_row": i, **row}, cfg) for i, row in enumerate(rows, start=1)], None)

    def question(self, doc: Doc) -> str:
        """The document as a question, ending where the answer starts."""
        options = "\n".join(f"{label}. {text}" for label, text in zip(self.cfg.choice_labels, doc.choices))
        return self._render(self.cfg.question_template, {**doc.row, "question": doc.question, "options": options})

    def continuations(self, doc: Doc) -> list[str]:
        """What the model scores for each choice: its label when the task has labels, else its text."""
        return list(self.cfg.choice_labels[: len(doc.choices)]) or doc.choices

    def target(self, doc: Doc, with_rationale: bool = False) -> str:
        """An exemplar's answer as the model should write it; with its steps for chain of thought."""
        if not with_rationale:
            return self._render(self.cfg.answer_template, {**doc.row, "answer": doc.answer})
        if not doc.rationale:
            raise ConfigError(
                f"task '{self.name}': a chain-of-thought exemplar has no rationale; map `eval.fields.rationale` "
                "or set `eval.answer_split`, or use exemplars without steps (prompting=few_shot)."
            )
        return self._render(self.cfg.rationale_template, {**doc.row, "answer": doc.answer, "rationale": doc.rationale})

    def exemplars(self, doc: Doc, k: int, rng: random.Random) -> list[Doc]:
        """``k`` solved documents drawn with ``rng`` (as lm-evaluation-harness's default sampler draws them)."""
        if k == 0:
            return []
        if self.pool is not None:
            if k > len(self.pool):
                raise ConfigError(f"k={k} exemplars asked, but task '{self.name}' has {len(self.pool)} in its exemplar pool.")
            return rng.sample(self.pool, k)
        if k >= len(self.docs):
            raise ConfigError(
                f"k={k} exemplars asked, but task '{self.name}' draws them from its {len(self.docs)} evaluated rows "
                "(minus the one asked); lower k or give an exemplar pool (eval.fewshot_path)."
            )
        return [d for d in rng.sample(self.docs, k + 1) if d is not doc][:k]

    def _render(self, template: str, values: dict) -> str:
        try:
            return template.format_map(values)
        except (KeyError, IndexError) as exc:
            raise ConfigError(f"task '{self.name}': template {template!r} names {exc}, which the row lacks (fields: {sorted(values)}).") from None


def to_doc(row: dict, cfg: EvalConfig) -> Doc:
    """One source row as a document; a missing or malformed field is an error naming the row."""
    where = f"{row['_source']} row {row['_row']}"
    row = {"question": row.get("prompt"), **row}
    needed = {"generation": ["question", "answer"], "multiple_choice": ["question", "choices", "label"], ROLLING: ["text"]}[cfg.kind]
    missing = [f for f in needed if row.get(f) is None]
    if missing:
        columns = sorted(k for k, v in row.items() if not k.startswith("_") and v is not None)
        raise DataError(
            f"{where}: task '{cfg.name}' needs field(s) {missing} (columns: {columns}); map them with "
            f"eval.fields, e.g. eval.fields={{{missing[0]}: <column>}}."
        )
    if cfg.kind == ROLLING:
        if not isinstance(row["text"], str) or not row["text"].strip():
            raise DataError(f"{where}: 'text' must be a non-empty string, got {row['text']!r}.")
        return Doc(row["text"], "", row=row)
    if cfg.kind == "generation":
        answer, rationale = str(row["answer"]), row.get("rationale")
        if cfg.answer_split:
            if cfg.answer_split not in answer:
                raise DataError(f"{where}: answer has no '{cfg.answer_split}' before the final answer: {answer!r}.")
            rationale, answer = (part.strip() for part in answer.rsplit(cfg.answer_split, 1))
        return Doc(str(row["question"]), answer, rationale, row=row)
    return _choice_doc(row, cfg, where)


def _choice_doc(row: dict, cfg: EvalConfig, where: str) -> Doc:
    texts, label = row["choices"], row["label"]
    if not (isinstance(texts, list) and len(texts) >= 2 and all(isinstance(t, str) for t in texts)):
        raise DataError(f"{where}: 'choices' must be a list of at least two texts, got {texts!r}.")
    labels = list(cfg.choice_labels)
    if labels and len(labels) < len(texts):
        raise DataError(f"{where}: {len(texts)} choices but only {len(labels)} eval.choice_labels.")
    if isinstance(label, str) and label in labels:
        label = labels.index(label)
    if not (isinstance(label, int) and 0 <= label < len(texts)):
        raise DataError(f"{where}: label {row['label']!r} is not a choice index (0..{len(texts) - 1}) or one of {labels}.")
    gold = labels[label] if labels else texts[label]
    return Doc(str(row["question"]), gold, row.get("rationale"), texts, label, row=row)


def _docs(name: str, src: SourceConfig | EvalConfig, cfg: EvalConfig, loaders: dict[str, Callable]) -> list[Doc]:
    rows, where = load_source(name, src, "prompt", loaders)
    if not rows:
        raise DataError(f"{where}: no rows to evaluate.")
    return [to_doc(row, cfg) for row in rows]


def load_task(cfg: EvalConfig, loaders: dict[str, Callable], exemplar_split: str | None = None) -> Task:
    """The task's documents and its exemplar pool: ``exemplar_split`` of the same source when given
    (none when it is the evaluated split), else ``eval.fewshot_path``, else none."""
    docs = _docs(cfg.name, cfg, cfg, loaders)
    pool = None
    if exemplar_split and cfg.path and Path(cfg.path).is_file():
        raise ConfigError(f"prompting.split={exemplar_split} names a split, but task '{cfg.name}' reads one file ({cfg.path}); give its exemplars with eval.fewshot_path.")
    if exemplar_split and exemplar_split != cfg.split:
        pool = _docs(f"{cfg.name}:{exemplar_split}", OmegaConf.merge(cfg, {"split": exemplar_split, "limit": None}), cfg, loaders)
    elif cfg.fewshot_path:
        pool = _docs(f"{cfg.name}:fewshot", OmegaConf.merge(cfg, {"loader": "file", "path": cfg.fewshot_path, "limit": None}), cfg, loaders)
    return Task(cfg, docs, pool)
