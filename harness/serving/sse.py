"""Incremental Server-Sent Events parser for streamed completions.

An OpenAI-compatible server streams ``data: {json}`` events separated by blank lines
and ends with ``data: [DONE]``. The network delivers bytes in arbitrary pieces: an
event, a line, even a multi-byte UTF-8 character may be split across reads, and one
read may hold several events. :class:`SSEDecoder` buffers what is incomplete and
returns each event exactly when its terminating blank line arrives, so a token's
timestamp is the time the bytes completing it were read, never later.

It follows the WHATWG event-stream rules the servers rely on: lines end in LF, CR or
CRLF (a CR at the end of one piece and the LF at the start of the next are one line
end); ``:`` lines are comments (keep-alives); several ``data:`` lines of one event
join with LF; one space after the colon is dropped; ``event:`` names the event type.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

DONE = "[DONE]"


@dataclass(frozen=True)
class SSEEvent:
    """One dispatched event: its ``data`` (data lines joined with LF) and ``event`` type."""

    data: str
    event: str = "message"

    @property
    def done(self) -> bool:
        """The OpenAI stream terminator ``data: [DONE]``."""
        return self.data.strip() == DONE


class SSEDecoder:
    """Feed bytes as they arrive; get back the events they complete."""

    def __init__(self) -> None:
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""  # text of a line whose end has not arrived yet
        self._skip_lf = False  # the previous piece ended in CR: a leading LF belongs to it
        self._data: list[str] = []
        self._event = ""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Parse ``chunk`` (any split of the stream) and return the events it completes."""
        text = self._text.decode(chunk)
        if self._skip_lf and text.startswith("\n"):
            text = text[1:]
        self._skip_lf = False
        events: list[SSEEvent] = []
        buffer = self._pending + text
        start = 0
        while True:
            cr, lf = buffer.find("\r", start), buffer.find("\n", start)
            if cr < 0 and lf < 0:
                break
            end = min(i for i in (cr, lf) if i >= 0)
            line = buffer[start:end]
            if buffer[end] == "\r":
                if end + 1 < len(buffer):
                    start = end + 2 if buffer[end + 1] == "\n" else end + 1
                else:  # CR at the very end: its LF may come in the next piece
                    start = end + 1
                    self._skip_lf = True
            else:
                start = end + 1
            event = self._line(line)
            if event is not None:
                events.append(event)
        self._pending = buffer[start:]
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: an event without its final blank line is still dispatched."""
        events = self.feed(b"")
        if self._pending:
            event = self._line(self._pending)
            self._pending = ""
            if event is not None:
                events.append(event)
        event = self._line("")
        if event is not None:
            events.append(event)
        return events

    def _line(self, line: str) -> SSEEvent | None:
        if line == "":
            if not self._data:
                self._event = ""
                return None
            event = SSEEvent("\n".join(self._data), self._event or "message")
            self._data, self._event = [], ""
            return event
        if line.startswith(":"):
            return None  # a comment: servers send these as keep-alives
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        return None
