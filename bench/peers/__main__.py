"""`python -m bench.peers`: the peers section alone, its tables printed as Markdown."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.peers import report


def _print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    print(f"\n### {title}\n\n| {' | '.join(columns)} |\n|{'---|' * len(columns)}")
    for row in rows:
        print(f"| {' | '.join(str(x) for x in row)} |")
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(report(Path(tempfile.mkdtemp(prefix="msgq-peers-")), _print_table))
