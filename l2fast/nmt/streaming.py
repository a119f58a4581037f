"""Input for ``translate``: lines split on newline characters only, read as they arrive, handed out in batches.

A reader thread puts each line on a queue; a batch is the first line waiting plus whatever else has
arrived by then (up to a cap). So a file or a fast pipe gives large batches, and an interactive
or slow producer gets each translation as soon as its line is in, not at the end of input.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import BinaryIO

from ..trainer.text import decode_line

_END = object()


def utf8_lines(stream: BinaryIO, name: str) -> Iterator[str]:
    """Lines of a binary stream split on b"\\n" only (\\x0c, \\x85 or U+2028 stay inside a line);
    invalid UTF-8 is a DataError naming the line."""
    for number, raw in enumerate(iter(stream.readline, b""), start=1):
        yield decode_line(raw, name, number)


def _read_into(lines: Iterator[str], out: queue.Queue) -> None:
    try:
        for line in lines:
            out.put(line)
        out.put(_END)
    except BaseException as e:  # handed to the consumer, which raises it in the main thread
        out.put(e)


def batches_as_available(lines: Iterator[str], max_lines: int = 1000) -> Iterator[list[str]]:
    """Batches of lines in input order: each waits for one line, then takes the lines already read."""
    waiting: queue.Queue = queue.Queue()
    threading.Thread(target=_read_into, args=(lines, waiting), daemon=True).start()
    while True:
        batch, item = [], waiting.get()
        while item is not _END and not isinstance(item, BaseException):
            batch.append(item)
            if len(batch) >= max_lines:
                item = None
                break
            try:
                item = waiting.get_nowait()
            except queue.Empty:
                item = None
                break
        if batch:
            yield batch  # the lines before a bad one are translated before its error
        if item is _END:
            return
        if isinstance(item, BaseException):
            raise item
