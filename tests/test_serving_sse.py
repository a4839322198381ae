"""SSE parsing: events come out whole whatever way the bytes are split."""

from harness.serving.sse import SSEDecoder, SSEEvent

STREAM = (
    ": keep-alive comment\n\n"
    'data: {"choices": [{"text": "h\u00e9llo \u4e16\u754c"}]}\n\n'
    "event: update\r\ndata: line one\r\ndata: line two\r\n\r\n"
    "data:no-space\r\r"
    "data: [DONE]\n\n"
).encode()
EXPECTED = [
    SSEEvent('{"choices": [{"text": "h\u00e9llo \u4e16\u754c"}]}'),
    SSEEvent("line one\nline two", "update"),
    SSEEvent("no-space"),
    SSEEvent("[DONE]"),
]


def parse(pieces):
    decoder = SSEDecoder()
    events = []
    for piece in pieces:
        events.extend(decoder.feed(piece))
    return events + decoder.close()


def test_whole_stream_in_one_piece():
    events = parse([STREAM])
    assert events == EXPECTED
    assert events[-1].done and not events[0].done


def test_every_single_split_point():
    # includes splits inside multi-byte UTF-8 characters, inside CRLF and between CR CR
    for cut in range(len(STREAM) + 1):
        assert parse([STREAM[:cut], STREAM[cut:]]) == EXPECTED, f"split at byte {cut}"


def test_byte_by_byte():
    assert parse([bytes([b]) for b in STREAM]) == EXPECTED


def test_events_are_returned_as_soon_as_their_blank_line_arrives():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.feed(b"\n") == [SSEEvent("a")]


def test_a_last_event_without_blank_line_is_dispatched_at_close():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: tail") == []
    assert decoder.close() == [SSEEvent("tail")]


def test_a_cr_at_the_end_of_a_piece_and_lf_at_the_start_of_the_next_are_one_line_end():
    assert parse([b"data: x\r", b"\n\r", b"\n"]) == [SSEEvent("x")]
