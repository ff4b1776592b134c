"""The HTTP side: Starlette routes speaking the OpenAI API over the scheduler.

POST /v1/chat/completions and /v1/completions (SSE when "stream": true), GET /v1/models and
/health. Every error is {"error": {"message", "type", "code", "param"}} with its status: 400 bad
JSON, bad field or context overflow (with the numbers), 401 wrong key, 404 unknown model or
route, 413 body too large, 429 queue full and 503 shutting down (both with Retry-After).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from loopcli.runtime.chat import render_chat
from loopcli.runtime.errors import ModelError
from loopcli.runtime.generate import Sampler, TextStream, stop_ids

from . import replies
from .scheduler import Job, QueueFull, Scheduler, Stopped
from .schemas import ApiError, ChatRequest, CompletionRequest, NamedChoice, parse

MAX_BODY = 16 << 20  # bytes of a request body
RETRY_AFTER_BUSY = 1  # seconds a client is told to wait when the queue is full
RETRY_AFTER_DOWN = 5
KEEPALIVE = 1.0  # seconds without output after which a stream sends a comment (finds gone clients)
KEEPALIVE_COMMENT = ": keep-alive\n\n"


class Server:
    """The served model: engine (through the scheduler), tokenizer, name and key."""

    def __init__(self, engine, tokenizer, name: str, parallel: int = 1, queue: int = 64,
                 api_key: str | None = None):
        self.engine, self.tokenizer, self.name, self.api_key = engine, tokenizer, name, api_key
        self.ctx = engine.max_context
        self.eos = frozenset(stop_ids(engine.cfg, tokenizer))
        self.scheduler = Scheduler(engine, parallel, queue)
        self.created = int(time.time())

    def check_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
            raise ApiError(401, "invalid or missing API key; send the server's key as 'Authorization: Bearer KEY'",
                           code="invalid_api_key")

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.name:
            raise ApiError(404, f"the model {model!r} does not exist here; this server serves {self.name!r} "
                           "(GET /v1/models)", code="model_not_found", param="model")

    def chat_prompt(self, req: ChatRequest) -> tuple[list[int], list[dict]]:
        """Token ids of the rendered conversation, and the tools the model was shown."""
        tools = [t.model_dump(exclude_none=True) for t in req.tools or []]
        choice = req.tool_choice
        if choice == "none":
            tools = []
        elif isinstance(choice, NamedChoice):
            name = choice.function.get("name")
            tools = [t for t in tools if t["function"]["name"] == name]
            if not tools:
                raise ApiError(400, f"tool_choice names the function {name!r}, which is not among the tools",
                               param="tool_choice")
        elif choice == "required" and not tools:
            raise ApiError(400, "tool_choice is 'required' but no tools were given", param="tool_choice")
        tok = self.tokenizer
        if not tok.chat_template:
            raise ApiError(400, "this model has no chat template; use /v1/completions with a raw prompt")
        try:
            prompt = render_chat(tok.chat_template, [m.plain() for m in req.messages], tools or None,
                                 add_generation_prompt=True, bos_token=tok.bos_token or "",
                                 eos_token=tok.eos_token or "")
        except ModelError as exc:
            raise ApiError(400, str(exc), param="messages") from None
        # templates that write the BOS themselves must not get a second one
        bos = tok.add_bos and not (tok.bos_token and prompt.startswith(tok.bos_token))
        return tok.encode(prompt, add_bos=bos), tools

    def completion_prompt(self, req: CompletionRequest) -> list[int]:
        if isinstance(req.prompt, str):
            return self.tokenizer.encode(req.prompt, add_bos=self.tokenizer.add_bos)
        vocab = self.engine.cfg.vocab_size
        bad = [t for t in req.prompt if not 0 <= t < vocab]
        if bad:
            raise ApiError(400, f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})", param="prompt")
        return list(req.prompt)

    def start(self, req, ids: list[int]) -> tuple[Job, asyncio.Queue]:
        """Check the request against the context, queue it; events arrive on the returned queue."""
        if len(ids) >= self.ctx:
            raise ApiError(400, f"this model's maximum context length is {self.ctx} tokens, but the prompt has "
                           f"{len(ids)} tokens; shorten it or start the server with a larger --ctx",
                           code="context_length_exceeded", param="messages")
        limit = req.limit
        if limit is not None and len(ids) + limit > self.ctx:
            raise ApiError(400, f"this model's maximum context length is {self.ctx} tokens, but {len(ids) + limit} "
                           f"were requested ({len(ids)} in the prompt, {limit} in max_tokens); lower max_tokens "
                           "or shorten the prompt", code="context_length_exceeded", param="max_tokens")
        try:
            seed = req.seed if req.seed is None or req.seed >= 0 else None
            sampler = Sampler(temperature=req.temperature, top_p=req.top_p, seed=seed)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(event):
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening
                loop.call_soon_threadsafe(events.put_nowait, event)

        job = Job(ids, sampler, limit or self.ctx - len(ids), emit, self.eos)
        try:
            self.scheduler.submit(job)
        except QueueFull as exc:
            raise ApiError(429, f"the server is busy: {exc}; retry later", type="rate_limit_error",
                           code="queue_full", headers={"Retry-After": str(RETRY_AFTER_BUSY)}) from None
        except Stopped as exc:
            raise ApiError(503, f"{exc}; retry later", type="server_error", code="unavailable",
                           headers={"Retry-After": str(RETRY_AFTER_DOWN)}) from None
        return job, events


class Run:
    """One generation as text deltas; afterwards `finish_reason`, `completion_tokens`."""

    def __init__(self, server: Server, job: Job, events: asyncio.Queue, stop: list[str]):
        self.server, self.job, self.events = server, job, events
        self.text = TextStream(server.tokenizer.decode, stop)
        self.finish_reason = "length"
        self.completion_tokens = 0

    async def deltas(self, idle=None):
        """Text deltas. Whenever KEEPALIVE passes without output: `idle()` is awaited, or
        without it an empty delta is yielded (a stream sends a keep-alive comment for it)."""
        try:
            while True:
                try:
                    event = await asyncio.wait_for(self.events.get(), KEEPALIVE)
                except asyncio.TimeoutError:
                    if idle is not None:
                        await idle()
                    else:
                        yield ""
                    continue
                kind = event[0]
                if kind == "error":
                    raise _as_api_error(event[1])
                if kind == "end":
                    self.finish_reason = "stop" if event[1] == "stop" else self.finish_reason
                    break
                self.completion_tokens += 1
                if event[1] in self.server.eos:
                    continue  # the worker ends the job right after
                delta = self.text.push(event[1])
                if delta:
                    yield delta
                if self.text.stopped:
                    self.finish_reason = "stop"
                    return
            tail = self.text.flush()
            if tail:
                yield tail
        finally:
            self.job.cancel.set()  # no-op when done; frees the slot when the client went away


def _as_api_error(exc: BaseException) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ModelError):
        return ApiError(400, str(exc))
    if isinstance(exc, Stopped):
        return ApiError(503, f"{exc}; retry later", type="server_error", code="unavailable",
                        headers={"Retry-After": str(RETRY_AFTER_DOWN)})
    return ApiError(500, f"generation failed ({type(exc).__name__}: {exc})", type="server_error")


async def _body(request: Request) -> bytes:
    size = int(request.headers.get("content-length") or 0)
    if size > MAX_BODY:
        raise ApiError(413, f"the request body is {size} bytes; the limit is {MAX_BODY}")
    chunks, got = [], 0
    async for chunk in request.stream():
        got += len(chunk)
        if got > MAX_BODY:
            raise ApiError(413, f"the request body is over the limit of {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def make_app(server: Server) -> Starlette:
    async def health(request: Request):
        stats = server.scheduler.stats()
        up = stats.pop("running")
        return JSONResponse({"status": "ok" if up else "unavailable", "model": server.name, **stats},
                            status_code=200 if up else 503)

    async def models(request: Request):
        server.check_key(request)
        return JSONResponse({"object": "list", "data": [{
            "id": server.name, "object": "model", "created": server.created, "owned_by": "loopcli",
            "max_model_len": server.ctx, "context_length": server.ctx}]})

    async def chat(request: Request):
        server.check_key(request)
        req = parse(ChatRequest, await _body(request))
        server.check_model(req.model)
        ids, tools = await asyncio.to_thread(server.chat_prompt, req)  # a long prompt must not stall the streams
        names = {t["function"]["name"] for t in tools}
        job, events = server.start(req, ids)
        run = Run(server, job, events, req.stop or [])
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta: dict, finish=None) -> str:
            return _sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": server.name,
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]})

        if not req.stream:
            text = "".join([d async for d in run.deltas(_gone_check(request, job))])
            content, calls = replies.tool_calls(text, names) if names else (text, [])
            message = {"role": "assistant", "content": content}
            if calls:
                message["tool_calls"] = calls
            return JSONResponse({
                "id": rid, "object": "chat.completion", "created": created, "model": server.name,
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": "tool_calls" if calls else run.finish_reason}],
                "usage": replies.usage(len(ids), run.completion_tokens, job.cached_tokens)})

        async def stream():
            yield chunk({"role": "assistant", "content": ""})
            held = replies.HeldText() if names else None
            calls = []
            try:
                async for delta in run.deltas():
                    if not delta:
                        yield KEEPALIVE_COMMENT
                        continue
                    out = held.push(delta) if held else delta
                    if out:
                        yield chunk({"content": out})
                if held is not None:
                    content, calls = replies.tool_calls(held.held, names) if held.holding else (held.held, [])
                    if content:
                        yield chunk({"content": content})
                    for i, call in enumerate(calls):
                        yield chunk({"tool_calls": [{"index": i, **call}]})
            except ApiError as exc:
                yield _sse({"error": {"message": exc.message, "type": exc.type, "code": exc.code}})
                yield "data: [DONE]\n\n"
                return
            yield chunk({}, "tool_calls" if calls else run.finish_reason)
            if req.usage_in_stream:
                yield _sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": server.name,
                            "choices": [], "usage": replies.usage(len(ids), run.completion_tokens, job.cached_tokens)})
            yield "data: [DONE]\n\n"

        return _streaming(stream(), job)

    async def completions(request: Request):
        server.check_key(request)
        req = parse(CompletionRequest, await _body(request))
        server.check_model(req.model)
        ids = await asyncio.to_thread(server.completion_prompt, req)
        job, events = server.start(req, ids)
        run = Run(server, job, events, req.stop or [])
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        echo = req.prompt if req.echo and isinstance(req.prompt, str) else ""

        def body(text: str, finish=None, usage=None) -> dict:
            out = {"id": rid, "object": "text_completion", "created": created, "model": server.name,
                   "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}
            if usage is not None:
                out["usage"] = usage
            return out

        if not req.stream:
            text = "".join([d async for d in run.deltas(_gone_check(request, job))])
            return JSONResponse(body(echo + text, run.finish_reason,
                                     replies.usage(len(ids), run.completion_tokens, job.cached_tokens)))

        async def stream():
            if echo:
                yield _sse(body(echo))
            try:
                async for delta in run.deltas():
                    yield _sse(body(delta)) if delta else KEEPALIVE_COMMENT
            except ApiError as exc:
                yield _sse({"error": {"message": exc.message, "type": exc.type, "code": exc.code}})
                yield "data: [DONE]\n\n"
                return
            yield _sse(body("", run.finish_reason))
            if req.usage_in_stream:
                yield _sse({**body(""), "choices": [],
                            "usage": replies.usage(len(ids), run.completion_tokens, job.cached_tokens)})
            yield "data: [DONE]\n\n"

        return _streaming(stream(), job)

    async def api_error(request: Request, exc: ApiError):
        return exc.response()

    async def http_error(request: Request, exc: HTTPException):
        return ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                        code="not_found" if exc.status_code == 404 else None).response()

    async def server_error(request: Request, exc: Exception):
        return ApiError(500, f"internal error ({type(exc).__name__}); the server keeps running",
                        type="server_error").response()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.to_thread(server.scheduler.close)

    return Starlette(
        routes=[Route("/health", health), Route("/v1/models", models),
                Route("/v1/chat/completions", chat, methods=["POST"]),
                Route("/v1/completions", completions, methods=["POST"])],
        exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: server_error},
        lifespan=lifespan)


def _gone_check(request: Request, job: Job):
    async def check():
        if await request.is_disconnected():
            job.cancel.set()
            raise ApiError(499, "the client closed the connection")
    return check


def _streaming(body, job: Job) -> StreamingResponse:
    """SSE from `body`; the job is cancelled however the stream ends (a client that went away
    makes the next write fail, and idle periods write a keep-alive comment)."""

    async def guarded():
        try:
            async for piece in body:
                yield piece
        finally:
            job.cancel.set()

    return StreamingResponse(guarded(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
