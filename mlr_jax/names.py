"""Name look-ups shared by the config, the environments and the reports (no package imports)."""

from __future__ import annotations

import difflib
from typing import Sequence


def close_matches(name: str, options: Sequence[str], n: int = 3) -> str:
    """A ``did you mean`` suffix listing close matches of ``name`` in ``options``."""
    matches = difflib.get_close_matches(name, list(options), n=n, cutoff=0.5)
    return f"; did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""
