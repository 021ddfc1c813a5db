"""Reading a whole text file as a user's tools wrote it, or one clear line saying why not.

A text input that is not UTF-8 (a Windows-1258 annotation file, a Latin-1 split file) names the file,
the line and the column of the first byte that does not decode, instead of a ``UnicodeDecodeError``
traceback from deep inside a reader.
"""
from __future__ import annotations

from src.errors import DataError


class NotUTF8(DataError):
    """A text file that does not decode as UTF-8; ``reason`` is its ``data_warnings`` category when
    one such file is skipped rather than the run stopped."""

    reason = "not_utf8"


def read_text(path: str, what: str, encoding: str = "utf-8") -> str:
    """The file's text. :class:`DataError` when it cannot be read, :class:`NotUTF8` (file:line:column
    of the first bad byte) when it is not UTF-8; ``what`` names the file's role in the message."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise NotUTF8(f"{path}:{line}:{column}: the {what} is not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
                      f"save it as UTF-8") from None
