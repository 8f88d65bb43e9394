"""How commands print: aligned ``key: value`` lines and tables for people (Hangul takes two
columns), JSON with ``--json``."""

from __future__ import annotations

import json
import time
import unicodedata
from collections.abc import Iterable
from typing import Any


def display_width(text: str) -> int:
    """Terminal columns: Hangul and other wide characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def pad(text: str, width: int) -> str:
    return text + " " * max(0, width - display_width(text))


def shorten(text: Any, limit: int = 80) -> str:
    text = " ".join(str(text).split())
    if display_width(text) <= limit:
        return text
    out = ""
    for char in text:
        if display_width(out + char) > limit - 1:
            break
        out += char
    return out + "…"


def print_kv(rows: Iterable[tuple[str, Any]], indent: int = 0) -> None:
    rows = [(k, v) for k, v in rows if v is not None]
    width = max((display_width(k) for k, _ in rows), default=0)
    for key, value in rows:
        print(" " * indent + pad(key + ":", width + 1) + " " + str(value))


def print_table(headers: list[str], rows: list[list[Any]], indent: int = 0) -> None:
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(display_width(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        line = "  ".join(pad(c, w) for c, w in zip(row, widths)).rstrip()
        print(" " * indent + line)


def print_json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2))


def when(timestamp: float | None) -> str:
    return "-" if timestamp is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes}m" if hours else f"{minutes}m {secs}s" if minutes else f"{secs}s"


def loss(value: float | None) -> str:
    return "?" if value is None else f"{value:.3f}"


def on_off(value: bool) -> str:
    return "on" if value else "off"


def add_json_flag(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts instead of text")
