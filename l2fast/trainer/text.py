"""Reading UTF-8 text files line by line, with errors that name the file and line."""
from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Unreadable or malformed corpus; the message names the file and line."""


def decode_line(raw: bytes, name: str, number: int) -> str:
    """One line of a UTF-8 text without its line ending (and, on line 1, without a byte-order mark);
    invalid UTF-8 is an error naming the file and line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{name}:{number}: invalid UTF-8 at byte {e.start} of the line ({e.reason})") from None
    if number == 1:
        text = text.removeprefix("\ufeff")
    return text.removesuffix("\n").removesuffix("\r")


def read_lines(path: str | Path) -> list[str]:
    """The lines of a UTF-8 file, split on "\\n" only (other Unicode line breaks stay inside a line)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read: {e.strerror}") from None
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [decode_line(line, str(path), number) for number, line in enumerate(lines, start=1)]
