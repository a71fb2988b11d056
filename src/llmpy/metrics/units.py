"""Numbers for people: durations as '1 h 02 min', shared by `llmpy plot`'s summaries and `llmpy plan`'s estimates."""

from __future__ import annotations


def format_duration(seconds: float) -> str:
    """3 d 04 h, 1 h 02 min, 1 min 35 s, 12.0 s (each unit truncated, so never '1 h 60 min')."""
    if seconds >= 86400:
        return f"{int(seconds // 86400)} d {int(seconds % 86400 // 3600):02d} h"
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    if seconds >= 60:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{seconds:.1f} s"
