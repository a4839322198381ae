"""A deterministic fake OpenAI-compatible server on 127.0.0.1, for the serving tests.

Plain asyncio streams (HTTP/1.1, keep-alive, chunked SSE), no dependency. Each
request waits for one of ``slots`` decode slots (so queueing is deterministic), then
sleeps ``ttft_s`` before its first token and ``itl_s`` before each next one, and
streams exactly ``max_tokens`` tokens. Every SSE event is written in two pieces split
at an odd offset, so clients must reassemble events split anywhere. ``exit_after``
makes the process die (``os._exit``) in the middle of request number ``exit_after + 1``:
a server killed mid-run. ``echo`` + ``logprobs`` requests get a log-probability of
-1 per prompt word, so the perplexity of any text is e.

Run as a script (``python tests/fake_openai_server.py --port-file F``) for CLI tests,
or as :class:`FakeServer` in a background thread for library tests. It binds only
127.0.0.1 and serves until stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

MODEL = "fake-model"


@dataclass
class Behaviour:
    ttft_s: float = 0.02
    itl_s: float = 0.005
    slots: int = 1
    exit_after: Optional[int] = None


class FakeServer:
    """The server; ``start()`` in a background thread, ``stop()`` when done."""

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.behaviour = behaviour or Behaviour()
        self.port = 0
        self.requests = 0
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._slots: asyncio.Semaphore | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def serve(self, port: int = 0) -> None:
        self._slots = asyncio.Semaphore(self.behaviour.slots)
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]

    def start(self) -> "FakeServer":
        ready = threading.Event()

        def main() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.serve())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=main, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is None:
            return

        async def close() -> None:
            assert self._server is not None
            self._server.close()
            handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)

        loop, self._loop = self._loop, None
        asyncio.run_coroutine_threadsafe(close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        loop.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                method, path, _ = request_line.decode().split(" ", 2)
                headers = {}
                while True:
                    line = (await reader.readline()).decode().strip()
                    if not line:
                        break
                    key, _, value = line.partition(":")
                    headers[key.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                body = json.loads(await reader.readexactly(length)) if length else {}
                await self._route(method, path, headers, body, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def _route(self, method: str, path: str, headers: dict, body: dict, writer: asyncio.StreamWriter) -> None:
        if method == "GET" and path == "/v1/models":
            await _json(writer, 200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
        elif method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
            self.bodies.append(body)
            self.headers.append(headers)
            if body.get("echo"):
                await _json(writer, 200, _echo(body))
            else:
                await self._stream(writer, body, chat=path.endswith("chat/completions"))
        else:
            await _json(writer, 404, {"error": {"message": f"no route {method} {path}"}})

    async def _stream(self, writer: asyncio.StreamWriter, body: dict, chat: bool) -> None:
        behaviour = self.behaviour
        self.requests += 1
        number = self.requests
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        assert self._slots is not None
        async with self._slots:
            await asyncio.sleep(behaviour.ttft_s)
            tokens = int(body.get("max_tokens", 16))
            for k in range(tokens):
                if k:
                    await asyncio.sleep(behaviour.itl_s)
                if behaviour.exit_after is not None and number > behaviour.exit_after and k == tokens // 2:
                    os._exit(17)  # killed mid-stream, the way a crashed server dies
                piece = {"delta": {"content": f" t{k}"}} if chat else {"text": f" t{k}"}
                await _event(writer, {"choices": [{"index": 0, **piece, "finish_reason": None}]})
            await _event(
                writer,
                {"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}
                if not chat
                else {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]},
            )
            if (body.get("stream_options") or {}).get("include_usage"):
                words = len(str(body.get("prompt") or body.get("messages")).split())
                await _event(writer, {"choices": [], "usage": {"prompt_tokens": words, "completion_tokens": tokens}})
            await _chunk(writer, b"data: [DONE]\n\n")
            await _chunk(writer, b"")


def _echo(body: dict) -> dict:
    words = str(body["prompt"]).split()
    logprobs = [None] + [-1.0] * (len(words) - 1) + [-1.0]
    return {
        "choices": [{"text": body["prompt"] + " x", "logprobs": {"token_logprobs": logprobs}}],
        "usage": {"prompt_tokens": len(words), "completion_tokens": 1},
    }


async def _json(writer: asyncio.StreamWriter, status: int, payload: dict) -> None:
    data = json.dumps(payload).encode()
    writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    await writer.drain()


async def _chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    await writer.drain()


async def _event(writer: asyncio.StreamWriter, payload: dict) -> None:
    data = f"data: {json.dumps(payload)}\n\n".encode()
    cut = max(1, len(data) // 3)  # split mid-JSON: the client must reassemble it
    await _chunk(writer, data[:cut])
    await _chunk(writer, data[cut:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--ttft-s", type=float, default=0.02)
    parser.add_argument("--itl-s", type=float, default=0.005)
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--exit-after", type=int, default=None)
    parser.add_argument("--max-lifetime-s", type=float, default=600.0, help="stops by itself after this long")
    args = parser.parse_args()
    server = FakeServer(Behaviour(args.ttft_s, args.itl_s, args.slots, args.exit_after))

    async def run() -> None:
        await server.serve()
        tmp = Path(args.port_file + ".tmp")
        tmp.write_text(str(server.port))
        tmp.rename(args.port_file)
        await asyncio.sleep(args.max_lifetime_s)

    asyncio.run(run())


if __name__ == "__main__":
    main()
