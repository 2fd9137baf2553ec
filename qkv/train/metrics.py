"""The metrics log: one JSON object per line in ``run_dir/metrics.jsonl``, flushed as it
is written, so a killed run keeps every record it wrote."""
from __future__ import annotations

import json
from pathlib import Path

from ..files import atomic_write_text


class MetricsLog:
    def __init__(self, path: Path, resume_step: int):
        """Opens the log for appending; records after ``resume_step`` (written by the run
        after its last checkpoint) are dropped, since the resumed run writes them again."""
        self.path = Path(path)
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
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
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
