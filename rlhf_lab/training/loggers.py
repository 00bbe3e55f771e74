"""``metrics.csv`` that continues across a resume (Lightning's CSV logger deletes the file it finds)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from rlhf_lab.training.files import write_atomic


def rows_to_keep(rows: list[dict], csv_rows: int | None, log_step: int | None) -> list[dict]:
    """The rows of a killed run that its resumed checkpoint covers: the ``csv_rows`` on disk when it
    was written, then rows its own step logged afterwards (at a step up to ``log_step``); the
    resumed run logs the rest again. Without that information (an old checkpoint), every row."""
    if log_step is None:
        return rows
    head = rows[: csv_rows or 0]
    return head + [row for row in rows[len(head) :] if row.get("step", "").isdigit() and int(row["step"]) <= log_step]


def read_csv_rows(path: Path) -> tuple[list[str], list[dict]]:
    """Header and rows; a last line without its newline is a write that a kill cut short: dropped."""
    text = path.read_text()
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text))
    return list(reader.fieldnames or []), list(reader)


def write_csv_rows(path: Path, header: list[str], rows: list[dict]) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, lambda f: f.write(out.getvalue().encode()))


class _ContinuedWriter(ExperimentWriter):
    """Lightning's writer, continuing the file: the header grows atomically, rows are appended."""

    def __init__(self, log_dir: str, keep: dict | None):
        self.keep = keep
        self.rows_written = 0  # rows of metrics.csv on disk
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # Lightning's deletes metrics.csv here
        path = Path(self.metrics_file_path)
        if self.keep is None or not path.is_file():  # a new run
            return
        header, rows = read_csv_rows(path)
        rows = rows_to_keep(rows, self.keep.get("csv_rows"), self.keep.get("log_step"))
        write_csv_rows(path, header, rows)
        self.metrics_keys, self.rows_written = header, len(rows)

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        path = Path(self.metrics_file_path)
        write_csv_rows(path, fieldnames, read_csv_rows(path)[1])

    def save(self) -> None:
        added = len(self.metrics)
        super().save()
        self.rows_written += added


class ContinuedCSVLogger(CSVLogger):
    """``<run dir>/metrics.csv``, each row written as it is logged (a killed run keeps its rows).
    ``keep``: None for a new run; when resuming, a checkpoint's ``ResumePoint.log_state``."""

    def __init__(self, run_dir: Path, keep: dict | None):
        super().__init__(save_dir=run_dir, name="", version="", flush_logs_every_n_steps=1)
        self.keep = keep

    @property
    @rank_zero_experiment
    def experiment(self) -> _ContinuedWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuedWriter(self.log_dir, self.keep)
        return self._experiment

    @property
    def rows_written(self) -> int:
        return self.experiment.rows_written
