"""Capped capture of a command's stdout/stderr.

A command may print without end (100 MB of stdout is one of the attacks); we keep the first
`cap` bytes, note that the rest was cut, and tell the caller so it can stop the command.
"""

from __future__ import annotations

TRUNCATION_MARK = "\n[qlp: output truncated at {cap} bytes]\n"


class CappedBuffer:
    __slots__ = ("_chunks", "_size", "cap", "truncated")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._chunks: list[bytes] = []
        self._size = 0
        self.truncated = False

    def feed(self, data: bytes) -> bool:
        """Keep what fits; return False once the cap has been passed (the caller stops)."""
        if self.truncated:
            return False
        room = self.cap - self._size
        if len(data) > room:
            if room > 0:
                self._chunks.append(data[:room])
                self._size += room
            self.truncated = True
            return False
        self._chunks.append(data)
        self._size += len(data)
        return True

    @property
    def size(self) -> int:
        return self._size

    def text(self) -> str:
        body = b"".join(self._chunks).decode("utf-8", errors="replace")
        if self.truncated:
            body += TRUNCATION_MARK.format(cap=self.cap)
        return body
