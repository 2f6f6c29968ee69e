"""Recording a benchmark's result: one section appended to benchmarks/README.md."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

README = Path(__file__).with_name("README.md")


def append(title: str, command: str, text: str) -> None:
    """Append ``### <title> (<date>, <cores> cores)``, the command and the result table."""
    with README.open("a") as f:
        f.write(f"\n### {title} ({datetime.now(timezone.utc):%Y-%m-%d}, {os.cpu_count()} cores)\n\n"
                f"`{command}`\n\n{text}\n")
