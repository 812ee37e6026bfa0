"""Echoing client-supplied text safely: in error messages (bounded, so gRPC metadata never overflows) and in
log lines (control and line-separator characters escaped, so a name cannot forge a line)."""

from __future__ import annotations


MAX_MESSAGE_CHARS = 1024


_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(char: str) -> str:
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape(text: str) -> str:
    """``text`` with control, format and line/paragraph-separator characters (\\r, \\n, U+2028, U+0085, ...) escaped."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() or char == " " else _escape_char(char) for char in text)


def bounded(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` escaped and cut to ``limit`` characters, saying how much was left out."""
    text = escape(text)
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    return f"{text[:limit]}... ({cut} more characters)"


def short(value: object, limit: int = 64) -> str:
    """A client-supplied name or value for quoting inside a message: escaped and at most ``limit`` characters."""
    text = escape(str(value))
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


# Lines of runtime errors that say where, not what: OpenVINO's source locations, TF's graph headers and tracebacks.
_WHERE = ("Exception from", "Check '", "Graph execution error", "Detected at node", "File \"", "Traceback")


def error_line(error: BaseException | str, limit: int = 300) -> str:
    """The line of a (multi-line) runtime error that says what went wrong: OpenVINO's and TensorFlow's messages
    open with where it happened; TF's real reason is the line before its ``[[{{node ...}}]]`` marker."""
    lines = [line.strip() for line in str(error).replace("\r\n", "\n").split("\n") if line.strip()]  # not at U+2028
    for index, line in enumerate(lines):
        if line.startswith("[[") and index and not lines[index - 1].startswith(_WHERE):
            return escape(lines[index - 1])[:limit]
    useful = [line for line in lines if not line.startswith(_WHERE)]
    text = (useful or lines or [type(error).__name__ if isinstance(error, BaseException) else "error"])[0]
    return escape(text)[:limit]


__all__ = ["escape", "bounded", "short", "error_line", "MAX_MESSAGE_CHARS"]
