"""Rows from files, hub datasets, generators and mixtures, validated before any training.

A row format names the canonical fields an objective reads:

- ``sft``: ``prompt`` + ``completion`` (text), ``messages`` (a chat: list of {role, content}
  ending with the assistant's answer), or ``text`` (plain text, every token trained on)
- ``preference``: ``prompt``, ``chosen``, ``rejected`` (text or message lists), or ``prompt`` +
  ``ranked``: a list of k >= 2 distinct responses, best first (it stands for all k(k-1)/2 pairs)
- ``prompt``: ``prompt`` (online RL; extra columns such as ``answer`` are kept)
- ``unpaired``: ``prompt``, ``completion`` and ``label``, true (desirable) or false (undesirable):
  binary feedback on single completions (KTO)

Public layouts are converted into these (``converter``, or detected as TRL detects them: ShareGPT
turns, preference pairs whose prompt is their shared beginning).

Every row also carries ``task``: its source or task name, so that evaluation can hold tasks out.
Errors name the file (or dataset) and the 1-based row.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from rlhf_lab.config import DataConfig, SourceConfig
from rlhf_lab.errors import DataError

if TYPE_CHECKING:  # imported where a source reads through it (a file being tokenised, a hub dataset): 19 MB a process
    import datasets

log = logging.getLogger(__name__)

FORMATS = {
    "sft": (("prompt", "completion"), ("messages",), ("text",)),
    "preference": (("prompt", "chosen", "rejected"), ("prompt", "ranked")),
    "prompt": (("prompt",),),
    "unpaired": (("prompt", "completion", "label"),),
}
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


# --- converters for known public layouts ---------------------------------------------------------
#
# A converter is a pure function of one row, ``(row, chat) -> row``, so that it can be mapped over a
# table. ``chat`` says whether the run's prompts go through a chat template: a layout that can be
# read either way (HH-RLHF's transcripts) gives message lists with one and text without. A row not
# in the layout raises LayoutError (or a KeyError for a missing field), named with its file and row.


class LayoutError(ValueError):
    """A row that a converter cannot read, and why."""


def alpaca(row: dict, chat: bool = False) -> dict:
    """Alpaca / self-instruct: instruction, optional input, output."""
    prompt = row["instruction"] if not row.get("input") else f"{row['instruction']}\n\n{row['input']}"
    return {"prompt": prompt, "completion": row["output"]}


SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def _chatml(turns: Any, name: str) -> list[dict]:
    """ShareGPT turns ({from, value}) as {role, content} messages."""
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise LayoutError(f"field '{name}' must be a list of {{from, value}} turns")
    messages = []
    for i, turn in enumerate(turns, start=1):
        if "role" in turn:  # already a message
            messages.append(turn)
            continue
        who = turn.get("from")
        if who not in SHAREGPT_ROLES:
            raise LayoutError(f"field '{name}' turn {i} has from={who!r} (ShareGPT roles: human, gpt, system)")
        messages.append({"role": SHAREGPT_ROLES[who], "content": turn.get("value")})
    return messages


def _is_sharegpt(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(isinstance(t, dict) and "from" in t and "value" in t for t in value)


def sharegpt(row: dict, chat: bool = False) -> dict:
    """ShareGPT: ``conversations`` of {from: human|gpt|system, value} becomes ``messages``; any
    other field holding such turns (a preference pair's chats) gets {role, content} too."""
    out = {k: _chatml(v, k) if _is_sharegpt(v) else v for k, v in row.items() if k != "conversations"}
    if "conversations" in row:
        out["messages"] = _chatml(row["conversations"], "conversations")
    elif not any(_is_sharegpt(v) for v in row.values()):
        raise LayoutError("no field 'conversations' (a list of {from, value} turns)")
    return out


def _split_chats(chosen: list[dict], rejected: list[dict]) -> int:
    """How many leading turns two chats share, cut back so that both answers start with an
    assistant turn (the prompt then ends where the model starts to answer)."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    while shared > 0 and not (
        shared < len(chosen) and shared < len(rejected) and chosen[shared]["role"] == rejected[shared]["role"] == "assistant"
    ):
        shared -= 1
    return shared


def _split_texts(chosen: str, rejected: str) -> int:
    """Where the shared beginning of two texts ends: before the first word in which they differ,
    with the whitespace before that word left to the answers (" yes" / " no", as TRL does)."""
    cut = 0
    while cut < min(len(chosen), len(rejected)) and chosen[cut] == rejected[cut]:
        cut += 1
    while cut > 0 and not chosen[cut - 1].isspace():  # never split a word
        cut -= 1
    while cut > 0 and chosen[cut - 1].isspace():
        cut -= 1
    return cut


def implicit_prompt(row: dict, chat: bool = False) -> dict:
    """TRL's implicit-prompt preferences: no ``prompt``; ``chosen`` and ``rejected`` are whole
    chats or texts, and what they share at the start is the prompt (whole turns for chats,
    whole words for texts)."""
    chosen, rejected = row["chosen"], row["rejected"]
    if isinstance(chosen, list) and isinstance(rejected, list):
        for name, value in (("chosen", chosen), ("rejected", rejected)):
            if not all(isinstance(m, dict) and "role" in m for m in value):
                raise LayoutError(f"field '{name}' must be a list of {{role, content}} messages")
        cut = _split_chats(chosen, rejected)
        shared = "leading turns"
    elif isinstance(chosen, str) and isinstance(rejected, str):
        cut = _split_texts(chosen, rejected)
        shared = "leading words"
    else:
        kinds = f"{type(chosen).__name__} and {type(rejected).__name__}"
        raise LayoutError(f"'chosen' and 'rejected' must both be texts or both chats, got {kinds}")
    if cut == 0:
        raise LayoutError(f"no 'prompt', and 'chosen' and 'rejected' share no {shared} to serve as one")
    return {**row, "prompt": chosen[:cut], "chosen": chosen[cut:], "rejected": rejected[cut:]}


HH_ROLES = {"Human": "user", "Assistant": "assistant"}
_HH_MARKER = re.compile(r"\n\n(Human|Assistant):")


def _hh_turns(text: Any, name: str) -> list[tuple[str, str, int]]:
    """(role, content, where the content starts) for each turn of an HH-RLHF transcript."""
    if not isinstance(text, str):
        raise LayoutError(f"field '{name}' must be a transcript (text), got {type(text).__name__}")
    marks = list(_HH_MARKER.finditer(text))
    if not marks or text[: marks[0].start()].strip():
        raise LayoutError(f"field '{name}' is not a transcript of '\\n\\nHuman:' / '\\n\\nAssistant:' turns")
    ends = [m.start() for m in marks[1:]] + [len(text)]
    return [(HH_ROLES[m.group(1)], text[m.end() : end], m.end()) for m, end in zip(marks, ends)]


def hh_rlhf(row: dict, chat: bool = False) -> dict:
    """Anthropic HH-RLHF: two transcripts that share their first turns. The shared turns up to the
    first assistant turn in which they differ are the prompt; each answer is the rest of its
    transcript (one assistant turn, or several turns when the dialogues part earlier). With a chat
    template they are ``messages``; without, the transcript text itself, cut after "Assistant:"."""
    chosen, rejected = _hh_turns(row["chosen"], "chosen"), _hh_turns(row["rejected"], "rejected")
    messages = lambda turns: [{"role": role, "content": content.strip()} for role, content, _ in turns]  # noqa: E731
    cut = _split_chats(messages(chosen), messages(rejected))
    if cut >= min(len(chosen), len(rejected)):
        raise LayoutError("'chosen' and 'rejected' have no assistant turn in which they differ")
    if chat:
        return {"prompt": messages(chosen[:cut]), "chosen": messages(chosen[cut:]), "rejected": messages(rejected[cut:])}
    start, start_rejected = chosen[cut][2], rejected[cut][2]  # just after "Assistant:"
    return {"prompt": row["chosen"][:start], "chosen": row["chosen"][start:], "rejected": row["rejected"][start_rejected:]}


def ultrafeedback(row: dict, chat: bool = False) -> dict:
    """UltraFeedback binarized: prompt text; chosen / rejected as chats whose last turn is the answer."""
    return {"prompt": row["prompt"], "chosen": row["chosen"][-1]["content"], "rejected": row["rejected"][-1]["content"]}


CONVERTERS: dict[str, Callable[[dict, bool], dict]] = {
    "alpaca": alpaca,
    "hh_rlhf": hh_rlhf,
    "ultrafeedback": ultrafeedback,
    "sharegpt": sharegpt,
    "implicit_prompt": implicit_prompt,
}


def detect_layout(row: dict, fmt: str) -> str | None:
    """The converter a row needs when none is configured, where TRL detects it too: ShareGPT turns
    (``conversations``, or {from, value} chats), and preference pairs without a ``prompt``."""
    if "messages" not in row and (_is_sharegpt(row.get("conversations")) or any(_is_sharegpt(v) for v in row.values())):
        return "sharegpt"
    if fmt == "preference" and row.get("prompt") is None and row.get("chosen") is not None and row.get("rejected") is not None:
        return "implicit_prompt"
    return None


# --- reading ------------------------------------------------------------------------------------
#
# A source's rows are read in batches as they are needed, never all at once: files and hub datasets
# through datasets' streaming readers (a file is read in chunks, whatever its size), a loader's rows
# as it returns them. Every row keeps its 1-based number in the source, for messages.


def _locate_utf8_problem(path: Path) -> None:
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                kind = "row" if path.suffix.lower() == ".jsonl" else "line"
                raise DataError(f"{path} {kind} {lineno}: not valid UTF-8 (byte 0x{line[exc.start]:02x} at column {exc.start + 1}); "
                                "save the file as UTF-8.") from None


def _locate_jsonl_problem(path: Path) -> None:
    """When Arrow cannot read a JSONL file, find the first bad line ourselves to name it (one line
    in memory at a time)."""
    types: dict[str, type] = {}
    rows = 0
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
            rows += 1
    if rows == 0:
        raise DataError(f"{path}: no rows (the file has only blank lines).")


def _digest(files: list[Path], root: Path) -> str:
    """sha256 over the files' names (relative to the directory ``root``; a lone file: its type)
    and bytes, read in 1 MiB blocks."""
    key = hashlib.sha256()
    for f in files:
        key.update(str(f.relative_to(root) if f != root else f.suffix.lower()).encode() + b"\0")
        with f.open("rb") as fh:
            while block := fh.read(1 << 20):
                key.update(block)
        key.update(b"\0")
    return key.hexdigest()


def is_dataset(rows: Any) -> bool:
    """Whether a loader returned a ``datasets.Dataset`` (none exists unless datasets was imported)."""
    module = sys.modules.get("datasets")
    return module is not None and isinstance(rows, module.Dataset)


@dataclass
class Source:
    """One configured source, unread: ``where`` names it in messages, ``key()`` identifies its
    content, ``batches()`` reads its rows a batch at a time."""

    name: str
    cfg: SourceConfig
    where: str
    path: Path | None = None  # a file or a local directory (files, local hub datasets)
    loaded: Any = None  # what a loader returned: a list of rows or a datasets.Dataset
    cache_dir: str | None = None

    def key(self) -> str:
        """Identifies the rows: the bytes of the files (so an edited file, even one that keeps its
        size and time, misses; a copy elsewhere hits), a hub dataset's resolved revision, a
        loader's rows themselves."""
        if self.path is not None:
            files = sorted(f for f in self.path.rglob("*") if f.is_file() and ".cache" not in f.parts) if self.path.is_dir() else [self.path]
            return "files:" + _digest(files, self.path)
        if self.loaded is None:
            import datasets

            try:
                builder = datasets.load_dataset_builder(self.cfg.hub, self.cfg.subset, cache_dir=self.cache_dir)
            except Exception as exc:
                raise DataError(f"could not load {self.where}: {type(exc).__name__}: {exc}") from exc
            return f"hub:{self.cfg.hub}:{self.cfg.subset}:{self.cfg.split}:{builder.hash}"
        if is_dataset(self.loaded):
            return "dataset:" + self.loaded._fingerprint
        key = hashlib.sha256()
        for row in self.loaded:
            key.update(json.dumps(row, sort_keys=True, default=str).encode() + b"\n")
        return "rows:" + key.hexdigest()

    def _stream(self) -> datasets.IterableDataset | list[dict]:
        if self.loaded is not None:
            return self.loaded.to_iterable_dataset() if is_dataset(self.loaded) else self.loaded
        import datasets

        try:
            if self.path is not None and self.path.is_file():
                builder = FILE_BUILDERS[self.path.suffix.lower()]
                return datasets.load_dataset(builder, data_files=str(self.path), split="train", streaming=True, cache_dir=self.cache_dir)
            return datasets.load_dataset(self.cfg.hub or str(self.path), self.cfg.subset, split=self.cfg.split, streaming=True,
                                         cache_dir=self.cache_dir)
        except Exception as exc:
            raise DataError(f"could not load {self.where}: {type(exc).__name__}: {exc}") from exc

    def batches(self, batch_size: int, start: int = 0, shuffle: tuple[int, int, int] | None = None,
                skip: int = 0, head: int | None = None) -> Iterator[tuple[list[int], list[dict]]]:
        """(row numbers, rows), ``batch_size`` rows at a time, from position ``start`` of the
        (first ``cfg.limit`` rows of the) source: its first ``head`` rows only, or all but its first
        ``skip`` (a stream's validation head, and the rest). ``shuffle=(seed, epoch, buffer_size)``
        reads it in a seeded order: a buffer of rows shuffled as it fills (a list: all of it)."""
        stream = self._stream()
        limit = min((n for n in (self.cfg.limit, head) if n is not None), default=None)
        if isinstance(stream, list):
            order = np.arange(skip, len(stream) if limit is None else min(limit, len(stream)))
            if shuffle is not None:
                order = np.random.default_rng([shuffle[0], shuffle[1]]).permutation(order)
            for at in range(start, len(order), batch_size):
                picked = order[at : at + batch_size]
                yield [int(i) + 1 for i in picked], [stream[i] for i in picked]
            return
        if limit is not None:
            stream = stream.take(limit)
        stream = stream.map(lambda row, i: {"_rowno": i + 1}, with_indices=True)
        if skip:
            stream = stream.skip(skip)
        if shuffle is not None:
            stream = stream.shuffle(seed=shuffle[0], buffer_size=shuffle[2])
            stream.set_epoch(shuffle[1])
        if start:
            stream = stream.skip(start)
        read = 0
        try:
            for batch in stream.iter(batch_size):
                rownos = batch.pop("_rowno")
                keys = list(batch)
                read += len(rownos)
                yield rownos, [dict(zip(keys, values)) for values in zip(*batch.values())]
        except (DataError, GeneratorExit):
            raise
        except Exception as exc:
            self._locate_problem()
            raise DataError(f"{self.where}: could not be read: {type(exc).__name__}: {exc}") from exc
        if not read and not start and not skip:  # a file of blank lines reads as no rows: say so
            self._locate_problem()

    def _locate_problem(self) -> None:
        """Name the first bad line of a file that Arrow could not read (one line in memory at a time)."""
        if self.path is not None and self.path.is_file():
            if self.path.suffix.lower() != ".parquet":
                _locate_utf8_problem(self.path)
            if self.path.suffix.lower() == ".jsonl":
                _locate_jsonl_problem(self.path)


def open_source(name: str, src: SourceConfig, fmt: str, loaders: dict[str, Callable], cache_dir: str | None = None) -> Source:
    """The source ``name`` as configured, checked but not read (a loader runs: it returns its rows)."""
    loader = src.loader
    if loader == "auto":
        loader = "file" if src.path else "hub" if src.hub else None
    if loader == "file":
        if not src.path:
            raise DataError(f"data source '{name}': loader=file needs `path` (data.path=FILE).")
        path = Path(src.path)
        if not path.exists():
            raise DataError(f"data file {src.path} does not exist.")
        if path.is_file():
            if path.suffix.lower() not in FILE_BUILDERS:
                raise DataError(f"{src.path}: unsupported file type '{path.suffix}' (use one of {', '.join(FILE_BUILDERS)}).")
            if path.stat().st_size == 0:
                raise DataError(f"{src.path}: the file is empty.")
        return Source(name, src, src.path, path=path, cache_dir=cache_dir)
    if loader == "hub":
        where = f"dataset {src.hub}" + (f" ({src.subset})" if src.subset else "") + f" split {src.split}"
        local = Path(src.hub) if src.hub and Path(src.hub).is_dir() else None
        return Source(name, src, where, path=local, cache_dir=cache_dir)
    if loader in loaders:
        rows = loaders[loader](src, fmt)
        return Source(name, src, f"loader '{loader}'", loaded=rows, cache_dir=cache_dir)
    known = ", ".join(["file", "hub", *sorted(loaders)])
    raise DataError(f"data source '{name}': set `path` or `hub`, or a loader (known: {known}); got loader={src.loader}.")


def load_source(
    name: str, src: SourceConfig, fmt: str, loaders: dict[str, Callable], cache_dir=None, chat: bool = True
) -> tuple[list[dict], str]:
    """Rows of one small source (evaluation tasks, seed instructions) as canonical dicts with
    ``task``; returns (rows, where) for messages. Training data goes through tokenised tables
    (``data/table.py``) instead and is never held whole. ``chat``: whether prompts will go through
    a chat template (see the converters)."""
    source = open_source(name, src, fmt, loaders, cache_dir)
    rows = [canonical(row, src, name, source.where, n, fmt, chat) for rownos, batch in source.batches(1000) for n, row in zip(rownos, batch)]
    return rows, source.where


def canonical(row: dict, src: SourceConfig, name: str, where: str, rowno: int, fmt: str, chat: bool) -> dict:
    """A row as read, in the canonical fields of ``fmt``: columns mapped (``fields``), a public
    layout converted (``converter``, or detected), ``task`` set; ``_source`` and ``_row`` say
    where it came from."""
    if src.fields:
        for canon, col in src.fields.items():
            if not isinstance(col, str):
                raise DataError(f"data.fields.{canon} must name a column (a string), got {type(col).__name__} {col!r}.")
        missing = [col for col in src.fields.values() if col not in row]
        if missing:
            raise DataError(f"{where} row {rowno}: mapped column(s) {missing} not found (columns: {sorted(row)}).")
        row = {**row, **{canon: row[col] for canon, col in src.fields.items()}}
    converter = src.converter or detect_layout(row, fmt)
    if converter:
        if converter not in CONVERTERS:
            raise DataError(f"unknown converter '{converter}' (known: {', '.join(CONVERTERS)}).")
        try:
            row = {**CONVERTERS[converter](row, chat), "task": row.get("task")}
        except KeyError as exc:
            raise DataError(f"{where} row {rowno}: not in {converter} layout: missing field {exc}.") from exc
        except (LayoutError, TypeError, IndexError, AttributeError) as exc:
            raise DataError(f"{where} row {rowno}: not in {converter} layout: {exc}.") from exc
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
        elif f == "text":
            if not _is_text(value):
                return "field 'text' is empty" if isinstance(value, str) else f"field 'text' must be text, got {type(value).__name__}"
        elif not (_is_text(value) or _is_chat(value)):
            if isinstance(value, str):
                return f"field '{f}' is empty"
            if isinstance(value, list):
                return f"field '{f}' must be text or a non-empty list of {{role, content}} messages"
            return f"field '{f}' must be text, got {type(value).__name__}"
        if f in ("chosen", "rejected") and isinstance(value, list) and value[-1]["role"] != "assistant":
            return f"field '{f}' must end with an assistant message"
    if "chosen" in layout and row["chosen"] == row["rejected"]:
        return "chosen and rejected are identical"
    return None


def validate(rows: list[dict], fmt: str, where: str, policy: str) -> tuple[list[dict], int]:
    """Of a small list of rows: stop at the first bad row (policy 'error') or drop bad rows and count them ('drop')."""
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
