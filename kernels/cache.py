"""Where graphopt keeps what it measured ($GRAPHOPT_CACHE, default ~/.cache/graphopt), and
JSON files there read and written safely: a file that cannot be read is empty, one that
cannot be written only costs the measurement again."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def cache_root(given: Path | None = None) -> Path:
    if given is not None:
        return Path(given)
    env = os.environ.get("GRAPHOPT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "graphopt"


def read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_cache(path: Path, cache: Mapping[str, Any]) -> None:
    """Atomically: a reader never sees half a file; a failure only costs the timing again."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(dict(cache), f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass
