"""The metrics log: one JSON object per line in ``run_dir/metrics.jsonl``, flushed as it
is written, so a killed run keeps every record it wrote (and at most half of the next)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import CheckpointError
from ..files import atomic_write_text


def _read(path: Path) -> list[tuple[str, dict]]:
    """(line, record) for each record. A last line that does not parse (a crash while
    writing it) is dropped with a warning; any other that does not is an error."""
    lines = [(n, line) for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
             if line.strip()]
    records = []
    for i, (n, line) in enumerate(lines):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            if i == len(lines) - 1:
                print(f"warning: {path}: dropped its incomplete last line {n} (a run stopped while "
                      "writing it)", file=sys.stderr)
                break
            raise CheckpointError(f"{path} line {n} is not a metrics record ({e}); delete that line "
                                  "or the file") from e
        records.append((line, record))
    return records


class MetricsLog:
    def __init__(self, path: Path, resume_step: int):
        """Opens the log for appending; records after ``resume_step`` (written by the run
        after its last checkpoint) are dropped, since the resumed run writes them again."""
        self.path = Path(path)
        if self.path.exists():
            kept = [line for line, record in _read(self.path) if record.get("step", 0) <= resume_step]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        self.file = open(self.path, "a")

    def write(self, **record) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class NullLog:
    """What ranks other than 0 write to: nothing."""

    def write(self, **record) -> None:
        pass

    def close(self) -> None:
        pass


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl; a partial last line is skipped (see ``_read``)."""
    return [record for _, record in _read(Path(path))]
