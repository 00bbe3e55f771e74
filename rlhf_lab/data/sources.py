"""Rows from files, hub datasets, generators and mixtures, validated before any training.

A row format names the canonical fields an objective reads:

- ``sft``: ``prompt`` + ``completion`` (text), or ``messages`` (a chat: list of {role, content}
  ending with the assistant's answer)
- ``preference``: ``prompt``, ``chosen``, ``rejected`` (text or message lists), or ``prompt`` +
  ``ranked``: a list of k >= 2 distinct responses, best first (it stands for all k(k-1)/2 pairs)
- ``prompt``: ``prompt`` (online RL; extra columns such as ``answer`` are kept)
- ``unpaired``: ``prompt``, ``completion`` and ``label``, true (desirable) or false (undesirable):
  binary feedback on single completions (KTO)

Every row also carries ``task``: its source or task name, so that evaluation can hold tasks out.
Errors name the file (or dataset) and the 1-based row.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any, Callable

import datasets

from rlhf_lab.config import DataConfig, SourceConfig
from rlhf_lab.errors import DataError

log = logging.getLogger(__name__)

FORMATS = {
    "sft": (("prompt", "completion"), ("messages",)),
    "preference": (("prompt", "chosen", "rejected"), ("prompt", "ranked")),
    "prompt": (("prompt",),),
    "unpaired": (("prompt", "completion", "label"),),
}
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


# --- converters for known public layouts ---------------------------------------------------------


def alpaca(row: dict) -> dict:
    """Alpaca / self-instruct: instruction, optional input, output."""
    prompt = row["instruction"] if not row.get("input") else f"{row['instruction']}\n\n{row['input']}"
    return {"prompt": prompt, "completion": row["output"]}


def hh_rlhf(row: dict) -> dict:
    """Anthropic HH-RLHF: two whole dialogues sharing everything up to the last assistant turn."""
    marker = "\n\nAssistant:"
    cut = row["chosen"].rfind(marker) + len(marker)
    prompt = row["chosen"][:cut]
    if not row["rejected"].startswith(prompt):
        cut = row["rejected"].rfind(marker) + len(marker)
    return {"prompt": prompt, "chosen": row["chosen"][cut:], "rejected": row["rejected"][len(prompt):]}


def ultrafeedback(row: dict) -> dict:
    """UltraFeedback binarized: prompt text; chosen / rejected as chats whose last turn is the answer."""
    return {"prompt": row["prompt"], "chosen": row["chosen"][-1]["content"], "rejected": row["rejected"][-1]["content"]}


CONVERTERS: dict[str, Callable[[dict], dict]] = {"alpaca": alpaca, "hh_rlhf": hh_rlhf, "ultrafeedback": ultrafeedback}


# --- loading -------------------------------------------------------------------------------------


def _load_file(path: str, split: str, cache_dir: str | None) -> datasets.Dataset:
    p = Path(path)
    if not p.exists():
        raise DataError(f"data file {path} does not exist.")
    if p.is_dir():
        return datasets.load_dataset(str(p), split=split, cache_dir=cache_dir)
    builder = FILE_BUILDERS.get(p.suffix.lower())
    if builder is None:
        raise DataError(f"{path}: unsupported file type '{p.suffix}' (use one of {', '.join(FILE_BUILDERS)}).")
    try:
        return datasets.load_dataset(builder, data_files=str(p), split="train", cache_dir=cache_dir)
    except Exception as exc:
        if p.suffix.lower() == ".jsonl":
            _locate_jsonl_problem(p)
        raise DataError(f"{path}: could not be read as {builder}: {type(exc).__name__}: {exc}") from exc


def _locate_jsonl_problem(path: Path) -> None:
    """When Arrow cannot read a JSONL file, find the first bad line ourselves to name it."""
    types: dict[str, type] = {}
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} row {lineno}: not valid JSON ({exc.msg}).") from None
            if not isinstance(row, dict):
                raise DataError(f"{path} row {lineno}: expected a JSON object, got {type(row).__name__}.")
            for key, value in row.items():
                if value is None:
                    continue
                seen = types.setdefault(key, type(value))
                if seen is not type(value):
                    raise DataError(
                        f"{path} row {lineno}: field '{key}' is {type(value).__name__}, "
                        f"earlier rows have {seen.__name__}."
                    )


def load_source(name: str, src: SourceConfig, fmt: str, loaders: dict[str, Callable], cache_dir=None) -> tuple[list[dict], str]:
    """Rows of one source as canonical dicts with ``task``; returns (rows, where) for messages."""
    loader = src.loader
    if loader == "auto":
        loader = "file" if src.path else "hub" if src.hub else None
    if loader == "file":
        where = src.path
        ds = _load_file(src.path, src.split, cache_dir)
    elif loader == "hub":
        where = f"dataset {src.hub}" + (f" ({src.subset})" if src.subset else "") + f" split {src.split}"
        try:
            ds = datasets.load_dataset(src.hub, src.subset, split=src.split, cache_dir=cache_dir)
        except Exception as exc:
            raise DataError(f"could not load {where}: {type(exc).__name__}: {exc}") from exc
    elif loader in loaders:
        where = f"loader '{loader}'"
        ds = loaders[loader](src, fmt)
    else:
        known = ", ".join(["file", "hub", *sorted(loaders)])
        raise DataError(f"data source '{name}': set `path` or `hub`, or a loader (known: {known}); got loader={src.loader}.")
    rows = list(ds) if not isinstance(ds, list) else ds
    if src.limit is not None:
        rows = rows[: src.limit]
    rows = [_canonical(row, src, name, where, i) for i, row in enumerate(rows, start=1)]
    return rows, where


def _canonical(row: dict, src: SourceConfig, name: str, where: str, rowno: int) -> dict:
    if src.fields:
        missing = [col for col in src.fields.values() if col not in row]
        if missing:
            raise DataError(f"{where} row {rowno}: mapped column(s) {missing} not found (columns: {sorted(row)}).")
        row = {**row, **{canon: row[col] for canon, col in src.fields.items()}}
    if src.converter:
        if src.converter not in CONVERTERS:
            raise DataError(f"unknown converter '{src.converter}' (known: {', '.join(CONVERTERS)}).")
        try:
            row = {**CONVERTERS[src.converter](row), "task": row.get("task")}
        except (KeyError, TypeError, IndexError, AttributeError) as exc:
            raise DataError(f"{where} row {rowno}: not in {src.converter} layout ({type(exc).__name__}: {exc}).") from exc
    row["task"] = src.task or row.get("task") or name
    row["_source"], row["_row"] = where, rowno
    return row


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _is_chat(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)
    )


def ranked_responses(row: dict) -> list:
    """A preference row's responses, best first: [chosen, rejected] for a pair."""
    return row["ranked"] if row.get("ranked") is not None else [row["chosen"], row["rejected"]]


def _ranked_problem(value: Any) -> str | None:
    if not isinstance(value, list) or len(value) < 2:
        return "field 'ranked' must be a list of at least two responses, best first"
    for i, response in enumerate(value, start=1):
        if not (_is_text(response) or _is_chat(response)):
            return f"field 'ranked' response {i} is empty" if isinstance(response, str) else f"field 'ranked' response {i} must be text"
        if response in value[: i - 1]:
            return f"field 'ranked' response {i} repeats response {value.index(response) + 1}"
    return None


def row_problem(row: dict, fmt: str) -> str | None:
    """Why ``row`` is not a valid ``fmt`` row, or None."""
    layouts = FORMATS[fmt]
    layout = next((lay for lay in layouts if all(row.get(f) is not None for f in lay)), None)
    if layout is None:
        wanted = " or ".join("+".join(lay) for lay in layouts)
        present = sorted(k for k, v in row.items() if v is not None)
        return f"missing field(s): needs {wanted} (has {present})"
    for f in layout:
        value = row[f]
        if f == "messages":
            if not _is_chat(value):
                return "field 'messages' must be a non-empty list of {role, content} objects"
            if value[-1]["role"] != "assistant" or not value[-1]["content"].strip():
                return "field 'messages' must end with a non-empty assistant message"
        elif f == "ranked":
            if problem := _ranked_problem(value):
                return problem
        elif f == "label":
            if not isinstance(value, bool):
                return f"field 'label' must be true or false, got {value!r}"
        elif not (_is_text(value) or _is_chat(value)):
            if isinstance(value, str):
                return f"field '{f}' is empty"
            return f"field '{f}' must be text, got {type(value).__name__}"
    if "chosen" in layout and row["chosen"] == row["rejected"]:
        return "chosen and rejected are identical"
    return None


def validate(rows: list[dict], fmt: str, where: str, policy: str) -> tuple[list[dict], int]:
    """Stop at the first bad row (policy 'error') or drop bad rows and count them ('drop')."""
    kept = []
    for rowno, row in enumerate(rows, start=1):
        problem = row_problem(row, fmt)
        if problem is None:
            kept.append(row)
        elif policy == "error":
            raise DataError(
                f"{where} row {row.get('_row', rowno)}: {problem}. Fix the row, or set data.invalid_rows=drop to skip invalid rows."
            )
    if not kept:
        raise DataError(f"{where}: no valid {fmt} rows.")
    if len(kept) < len(rows):
        log.warning("%s: dropped %d invalid %s row(s) (data.invalid_rows=drop).", where, len(rows) - len(kept), fmt)
    return kept, len(rows) - len(kept)


def mix(parts: dict[str, list[dict]], weights: dict[str, float], size: int | None, seed: int) -> list[dict]:
    """Draw ``size`` rows from the sources in proportion to their weights (with replacement only
    where a source is asked for more rows than it has); the result is shuffled."""
    total_w = sum(weights.values())
    size = size or sum(len(rows) for rows in parts.values())
    rng = random.Random(seed)
    out: list[dict] = []
    for name, rows in parts.items():
        n = round(size * weights[name] / total_w)
        if n <= len(rows):
            out += rng.sample(rows, n)
        else:
            out += rows + rng.choices(rows, k=n - len(rows))
    rng.shuffle(out)
    return out


def load_rows(cfg: DataConfig, fmt: str, loaders: dict[str, Callable], seed: int) -> tuple[list[dict], dict[str, Any]]:
    """All rows of the configured source or mixture, validated; plus counts for the run summary."""
    sources = dict(cfg.sources) if cfg.sources else {"data": cfg}
    parts, stats = {}, {"dropped_invalid": 0}
    for name, src in sources.items():
        if src.weight < 0:
            raise DataError(f"data.sources.{name}.weight must be >= 0, got {src.weight}.")
        rows, where = load_source(name, src, fmt, loaders, cfg.cache_dir)
        rows, dropped = validate(rows, fmt, where, cfg.invalid_rows)
        stats["dropped_invalid"] += dropped
        parts[name] = rows
    if len(parts) == 1:
        return next(iter(parts.values())), stats
    return mix(parts, {n: s.weight for n, s in sources.items()}, cfg.mixture_size, seed), stats
