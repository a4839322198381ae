"""``backend=openai``: any OpenAI-compatible HTTP server (vLLM, TGI, llama.cpp, OVMS...).

The server already holds the model; the harness is the client. Requests stream
(Server-Sent Events) so TTFT and every inter-token gap come from the stream, read with
``httpx``'s async client: many requests in flight on one event loop, the measuring
loop never blocked. Both APIs: ``/completions`` (``api=completions``, the prompt as
text) and ``/chat/completions`` (``api=chat``, the prompt as one user message).

Probe: ``GET {base_url}/models`` must answer; a wrong URL is ``unavailable`` (exit 3)
with one line. A request that cannot connect is retried ``retries`` times; when the
server stays unreachable the load stops (:class:`harness.serving.session.ServerGone`)
and the run ends ``failed`` with the requests that finished kept. Retries and
timeouts are counted in ``metrics.backend``. The API key is read from the environment
variable that ``api_key_env`` names; only that name is ever recorded.

Accuracy: perplexity from prompt log-probabilities (``echo`` + ``logprobs`` on
``/completions``, which vLLM supports); a server that does not return them gets
``accuracy: null`` with the reason.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Optional, Sequence

from harness.backend import Artifact, Availability, Backend, Capabilities, Session
from harness.config import choice, require
from harness.errors import ConfigError, Unsupported, exception_line
from harness.hookspecs import hookimpl
from harness.serving.session import GenerationRequest, ServerGone, ServingModel, ServingPlan, ServingSession, StreamEnd, StreamEvent, TokenChunk, Tokenizer, now
from harness.serving.sse import SSEDecoder
from harness.serving.workload import load_tokenizer

APIS = ("completions", "chat")


@dataclass
class OpenAIOptions:
    """``backend=openai`` options (see conf/backend/openai.yaml)."""

    base_url: str = "http://127.0.0.1:8080/v1"
    model: Optional[str] = None
    api: str = "completions"
    api_key_env: Optional[str] = None
    timeout_s: float = 60.0
    connect_timeout_s: float = 5.0
    retries: int = 2
    max_connections: int = 256
    ignore_eos: bool = True
    tokenizer: Optional[str] = None
    extra_body: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        choice(self.api, APIS, "api")
        require(self.base_url.startswith(("http://", "https://")), "base_url", f"must start with http:// or https://, got '{self.base_url}'")
        require(self.timeout_s > 0, "timeout_s", f"must be > 0, got {self.timeout_s}")
        require(self.connect_timeout_s > 0, "connect_timeout_s", f"must be > 0, got {self.connect_timeout_s}")
        require(self.retries >= 0, "retries", f"must be >= 0, got {self.retries}")
        require(self.max_connections >= 1, "max_connections", f"must be >= 1, got {self.max_connections}")

    @property
    def root(self) -> str:
        return self.base_url.rstrip("/")


def _headers(options: OpenAIOptions) -> dict[str, str]:
    """Request headers; the API key comes from the environment, never from config."""
    if not options.api_key_env:
        return {}
    key = os.environ.get(options.api_key_env)
    if not key:
        raise ConfigError(
            f"backend.api_key_env names ${options.api_key_env}, which is not set",
            f"export {options.api_key_env}=<key>, or set backend.api_key_env=null for a server without a key",
        )
    return {"Authorization": f"Bearer {key}"}


def _served_models(payload: Any) -> list[str]:
    return [str(m.get("id")) for m in (payload or {}).get("data", []) if isinstance(m, dict) and m.get("id")]


def _output_chunk(choice_: dict[str, Any], arrived: float) -> Optional[TokenChunk]:
    """The output one streamed choice carries, or None for a chunk that carries none.

    A chunk is output when it has a text (``completions``) or content (``chat``) field,
    even an empty one: a server holds back the bytes of a token that ends inside a
    UTF-8 character and streams an empty text for it. Not output: the chat role chunk
    (content null) and the closing chunk (empty text with a ``finish_reason``). Each
    output chunk counts as one token; the total comes from ``usage`` when the server
    sends it (vLLM's convention: ITL is chunk to chunk, TPOT uses the token count).
    """
    text = choice_.get("text") if "text" in choice_ else (choice_.get("delta") or {}).get("content")
    if not isinstance(text, str) or (not text and choice_.get("finish_reason")):
        return None
    return TokenChunk(arrived, tokens=1, text=text)


class OpenAIServingSession(ServingSession):
    """Streams requests to one server over a pooled async HTTP client."""

    precision = "server"

    def __init__(self, options: OpenAIOptions, model: str, tokenizer: Optional[Tokenizer]) -> None:
        import httpx

        self.options = options
        self.model = model
        self.device = options.root  # the server is the device: its base URL
        self._tokenizer = tokenizer
        self._headers = _headers(options)
        timeout = httpx.Timeout(options.timeout_s, connect=options.connect_timeout_s)
        limits = httpx.Limits(max_connections=options.max_connections, max_keepalive_connections=options.max_connections)
        self.client = httpx.AsyncClient(timeout=timeout, limits=limits, headers=self._headers)
        self.retries_used = 0
        self.timeouts = 0

    def tokenizer(self) -> Optional[Tokenizer]:
        return self._tokenizer

    def metrics(self) -> dict[str, Any]:
        return {
            "engine": "remote OpenAI-compatible server",
            "batching": "the server's own (remote)",
            "concurrency": "the server's own",
            "endpoint": f"{self.options.root}/{'chat/completions' if self.options.api == 'chat' else 'completions'}",
            "model": self.model,
            "retries_used": self.retries_used,
            "timeouts": self.timeouts,
            "timeout_s": self.options.timeout_s,
            "retries": self.options.retries,
        }

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "stream": True,
            "max_tokens": request.max_tokens,
            "temperature": 0.0,
            "stream_options": {"include_usage": True},
        }
        if request.ignore_eos and self.options.ignore_eos:
            body["ignore_eos"] = True  # vLLM, llama.cpp and TGI honour it: exactly max_tokens tokens
        if self.options.api == "chat":
            body["messages"] = [{"role": "user", "content": request.prompt}]
        else:
            body["prompt"] = request.prompt
        body.update(self.options.extra_body)
        return body

    async def _open(self, path: str, body: dict[str, Any]) -> Any:
        """An open streaming response. Failures before any response byte are retried: a
        refused connection, or a pooled keep-alive connection the server had just closed
        (servers cap requests per connection). Still refused after ``retries``: :class:`ServerGone`."""
        import httpx

        url = f"{self.options.root}/{path}"
        for attempt in range(self.options.retries + 1):
            try:
                response = await self.client.send(self.client.build_request("POST", url, json=body), stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                if attempt == self.options.retries:
                    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
                        raise ServerGone(f"cannot connect to {self.options.root} ({exception_line(exc, 200)})") from None
                    raise RuntimeError(f"no response from {url} ({exception_line(exc, 200)})") from None
                self.retries_used += 1
                await asyncio.sleep(0.2 * (attempt + 1))
                continue
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                await response.aclose()
                raise RuntimeError(f"HTTP {response.status_code} from {url}: {' '.join(text.split())[:200]}")
            return response
        raise AssertionError("unreachable")

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        import httpx

        path = "chat/completions" if self.options.api == "chat" else "completions"
        response = await self._open(path, self._body(request))
        decoder = SSEDecoder()
        usage: dict[str, Any] = {}
        finish: Optional[str] = None
        timings: dict[str, Any] = {}
        try:
            async for raw in response.aiter_raw():
                arrived = now()
                for event in decoder.feed(raw):
                    if event.done:
                        continue
                    payload = json.loads(event.data)
                    if "error" in payload:
                        raise RuntimeError(f"server error in stream: {' '.join(str(payload['error']).split())[:200]}")
                    usage = payload.get("usage") or usage
                    timings = payload.get("timings") or timings
                    for choice_ in payload.get("choices") or []:
                        chunk = _output_chunk(choice_, arrived)
                        finish = choice_.get("finish_reason") or finish
                        if chunk is not None:
                            yield chunk
        except httpx.ReadTimeout:
            self.timeouts += 1
            raise RuntimeError(f"no data for timeout_s={self.options.timeout_s:g} s") from None
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise RuntimeError(f"connection dropped mid-stream ({exception_line(exc, 200)})") from None
        finally:
            await response.aclose()
        yield StreamEnd(now(), usage.get("prompt_tokens"), usage.get("completion_tokens"), finish, {"timings": timings} if timings else {})

    async def perplexity(self, texts: Sequence[str]) -> dict[str, Any]:
        """exp(mean negative log-likelihood) of prompt tokens via ``echo`` + ``logprobs``."""
        total, count = 0.0, 0
        url = f"{self.options.root}/completions"
        for text in texts:
            body = {"model": self.model, "prompt": text, "max_tokens": 1, "echo": True, "logprobs": 1, "temperature": 0.0}
            try:
                response = await self.client.post(url, json=body)
            except Exception as exc:
                return {"value": None, "reason": f"scoring request failed: {exception_line(exc, 200)}", "tokens": count}
            if response.status_code != 200:
                return {"value": None, "reason": f"the server refused echo+logprobs (HTTP {response.status_code})", "tokens": count}
            payload = response.json()
            prompt_tokens = (payload.get("usage") or {}).get("prompt_tokens")
            logprobs = ((payload.get("choices") or [{}])[0].get("logprobs") or {}).get("token_logprobs") or []
            if not prompt_tokens or len(logprobs) < prompt_tokens:
                return {
                    "value": None,
                    "tokens": count,
                    "reason": "the server returned no prompt log-probabilities for echo=true (vLLM does; llama.cpp's server does not)",
                }
            scored = [lp for lp in logprobs[1:prompt_tokens] if lp is not None]
            total += -sum(scored)
            count += len(scored)
        if count == 0:
            return {"value": None, "reason": "no prompt token was scored", "tokens": 0}
        return {"value": math.exp(total / count), "reason": "prompt log-probabilities from the server (echo)", "tokens": count}

    async def aclose(self) -> None:
        await self.client.aclose()


class OpenAIBackend(Backend):
    """A client of an OpenAI-compatible server: serving only (no local sessions)."""

    name = "openai"
    options_type = OpenAIOptions

    @classmethod
    def probe(cls, options: OpenAIOptions) -> Availability:
        try:
            import httpx
        except ImportError:
            return Availability(False, "httpx is not installed (pip install 'harness[serving]')")
        try:
            headers = _headers(options)
        except ConfigError as exc:
            return Availability(False, exc.one_line())
        url = f"{options.root}/models"
        try:
            response = httpx.get(url, headers=headers, timeout=options.connect_timeout_s)
        except httpx.HTTPError as exc:
            return Availability(False, f"no server answers at {url}: {exception_line(exc, 200)}", versions={"httpx": httpx.__version__})
        if response.status_code != 200:
            return Availability(
                False, f"GET {url} answered HTTP {response.status_code}, not an OpenAI-compatible model list", versions={"httpx": httpx.__version__}
            )
        try:
            served = _served_models(response.json())
        except ValueError:
            return Availability(False, f"GET {url} did not return JSON", versions={"httpx": httpx.__version__})
        if options.model and options.model not in served:
            return Availability(
                False,
                f"model '{options.model}' is not served at {options.root} (it serves: {', '.join(served) or 'none'})",
                versions={"httpx": httpx.__version__},
            )
        return Availability(True, devices=(options.root,), versions={"httpx": httpx.__version__, "openai": httpx.__version__})

    def capabilities(self) -> Capabilities:
        return Capabilities(precisions=frozenset({"server"}), consumes=("server",))

    def version(self) -> str:
        import httpx

        return f"httpx {httpx.__version__}"

    def device(self) -> str:
        return self.options.root

    def prepare(self, artifact: Artifact, precision: str) -> Session:
        raise Unsupported("backend 'openai' serves LLM generation requests over HTTP; it runs no local model", "use +scenario=llm_serve with backend=openai")

    def prepare_serving(self, model: ServingModel, plan: ServingPlan) -> OpenAIServingSession:
        """A session on the probed server; the served model is ``backend.model`` or the only one listed."""
        import httpx

        if plan.precision not in ("auto", "server"):
            raise Unsupported(
                f"backend 'openai' runs what the server runs; precision '{plan.precision}' cannot be chosen by the client",
                "leave scenario.precision=auto (the server's precision is the server's choice)",
            )
        name = self.options.model
        if not name:
            response = httpx.get(f"{self.options.root}/models", headers=_headers(self.options), timeout=self.options.connect_timeout_s)
            served = _served_models(response.json())
            if len(served) != 1:
                raise ConfigError(f"the server at {self.options.root} serves {len(served)} models ({', '.join(served)})", "pick one with backend.model=<id>")
            name = served[0]
        tokenizer = load_tokenizer(self.options.tokenizer) if self.options.tokenizer else model.tokenizer()
        return OpenAIServingSession(self.options, name, tokenizer)


@hookimpl
def harness_register_backends(registry: Any) -> None:
    registry.add_backend(OpenAIBackend)
