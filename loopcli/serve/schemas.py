"""Request bodies (pydantic) and OpenAI-shaped errors.

Fields a request may carry that we do not use are ignored, as OpenAI-compatible servers do;
fields we use are checked, and a bad one is a 400 naming it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from starlette.responses import JSONResponse

MAX_STOP = 16  # stop strings per request


class ApiError(Exception):
    """An error answered as {"error": {"message", "type", "code", "param"}} with `status`."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class Sampling(_Body):
    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)  # negative: a random seed, as llama.cpp's -1
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=1)  # one choice per request

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data):
        """Clients send null for fields they leave unset."""
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        return [s for s in stops if s]

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def usage_in_stream(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class Function(_Body):
    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Body):
    type: Literal["function"] = "function"
    function: Function


class NamedChoice(_Body):
    type: Literal["function"] = "function"
    function: dict[str, str]


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_call_id...: the template may use them
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[dict[str, Any]] | None = None

    def plain(self) -> dict:
        """The message as the chat template takes it: text parts joined, developer as system."""
        m = self.model_dump(exclude_none=True)
        if isinstance(self.content, list):
            m["content"] = "".join(p.get("text", "") for p in self.content
                                   if isinstance(p, dict) and p.get("type") == "text")
        if m["role"] == "developer":
            m["role"] = "system"
        return m


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedChoice | None = None


class CompletionRequest(Sampling):
    prompt: str | list[int] = Field(min_length=1)
    echo: bool = False


def parse(model: type[BaseModel], raw: bytes) -> Any:
    """The request body as `model`, or a 400 naming what is wrong."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] in ("json_invalid", "json_type"):
            raise ApiError(400, f"the request body is not valid JSON ({first['msg']}); send a JSON object",
                           code="invalid_json") from None
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ApiError(400, f"invalid {where}: {first['msg']}", code="invalid_value", param=where) from None
