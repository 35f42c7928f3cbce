"""OpenAI's request and response shapes: parsing and validating requests, building replies and errors.

Pure (no server, no engine): a request body becomes a frozen :class:`Job` or an :class:`ApiError`
carrying the status and OpenAI's error object, so bad input is always a 4xx with the field named.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

from fitchat.format import printable
from fitchat.llama.engine import DEFAULT_SAMPLING, InvalidSampling, SamplingSettings

#: Largest request body read (bytes); a longer one is a 413.
MAX_BODY_BYTES = 8 * 1024 * 1024
#: Most messages in one chat request (as OpenAI's limit). Fitting a longer conversation to the context
#: renders it again per dropped message, which would hold the engine for minutes past any client's wait.
MAX_MESSAGES = 2048
#: Most stop sequences in one request (OpenAI allows 4; a few more cost nothing).
MAX_STOPS = 16
#: Longest stop sequence, in characters.
MAX_STOP_CHARS = 256
#: ``/v1/completions``' default reply length when ``max_tokens`` is absent (as OpenAI's legacy endpoint).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
#: Roles a chat message may have; ``developer`` (OpenAI's newer name) is served as ``system``.
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class ApiError(Exception):
    """A request the server refuses, as OpenAI's error object with its HTTP status."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """A 400 for a bad parameter."""
    return ApiError(400, message, param=param, code=code)


@dataclass(frozen=True)
class Job:
    """One validated request: what to generate and how to answer."""

    kind: str  # "chat" | "completion"
    model: str  # the id echoed back (the served model's)
    settings: SamplingSettings
    stream: bool
    include_usage: bool = False
    messages: tuple[tuple[str, str], ...] = ()  # (role, content) for chat
    prompt: str = ""  # for completions
    stops: tuple[str, ...] = ()

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]


def parse_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object; 400 for anything else."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise bad(f"the request body is not valid JSON ({type(exc).__name__})", code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad("the request body must be a JSON object")
    try:  # "\\ud800" parses to a lone surrogate, which is not text: no engine, reply or error can carry it
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, RecursionError):
        raise bad("the request body holds a string that is not valid Unicode text (a lone surrogate)",
                  code="invalid_json") from None
    return data


def _number(data: dict[str, Any], name: str, low: float, high: float, default: float) -> float:
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad(f"'{name}' must be a number", name)
    if not (low <= value <= high and math.isfinite(value)):  # compared first: a 400-digit int has no float
        raise bad(f"'{name}' must be between {low:g} and {high:g}, got {printable(value, 40)}", name)
    return float(value)


def _integer(data: dict[str, Any], name: str, low: int, high: int | None = None) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"'{name}' must be an integer", name)
    if value < low or (high is not None and value > high):
        raise bad(f"'{name}' must be at least {low}" + (f" and at most {high}" if high is not None else "")
                  + f", got {value}", name)
    return value


def _stops(data: dict[str, Any]) -> tuple[str, ...]:
    value = data.get("stop")
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise bad("'stop' must be a string or a list of strings", "stop")
    if len(items) > MAX_STOPS:
        raise bad(f"'stop' takes at most {MAX_STOPS} sequences", "stop")
    if any(len(s) > MAX_STOP_CHARS for s in items):
        raise bad(f"each 'stop' sequence must be at most {MAX_STOP_CHARS} characters", "stop")
    return tuple(s for s in items if s)


def sampling(data: dict[str, Any], default_max_tokens: int | None = None) -> SamplingSettings:
    """OpenAI's sampling fields over fitchat's defaults (those of ``fitchat chat``), validated.

    Fields a request leaves out keep fitchat's chat defaults (temperature 0.8, top_p 0.95, top-k 40,
    min-p 0.05, repeat penalty 1.1), which are also llama-cpp-python's server's.
    """
    seed = _integer(data, "seed", -(2**63), 2**64 - 1)
    max_tokens = _integer(data, "max_completion_tokens", 1) or _integer(data, "max_tokens", 1) or default_max_tokens
    n = _integer(data, "n", 1)
    if n not in (None, 1):
        raise bad("'n' must be 1: one engine gives one choice per request", "n")
    # OpenAI's own bounds first (a client gets the error OpenAI would give), then the engine's rules,
    # which every front end shares (SamplingSettings checks them when it is made).
    try:
        return replace(
            DEFAULT_SAMPLING,
            temperature=_number(data, "temperature", 0.0, 2.0, DEFAULT_SAMPLING.temperature),
            top_p=_number(data, "top_p", 0.0, 1.0, DEFAULT_SAMPLING.top_p),
            frequency_penalty=_number(data, "frequency_penalty", -2.0, 2.0, 0.0),
            presence_penalty=_number(data, "presence_penalty", -2.0, 2.0, 0.0),
            seed=seed,
            max_tokens=max_tokens,
        )
    except InvalidSampling as exc:
        raise bad(f"'{exc.field}' {exc.rule}", exc.field) from None


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, list):
        texts = []
        for i, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad(f"{where}.content[{i}] must be a text part ({{\"type\": \"text\", \"text\": ...}}): "
                          "this server reads text only", f"{where}.content")
            texts.append(part["text"])
        return "\n".join(texts)
    raise bad(f"{where}.content must be a string or a list of text parts", f"{where}.content")


def _messages(data: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    value = data.get("messages")
    if not isinstance(value, list) or not value:
        raise bad("'messages' must be a non-empty list", "messages")
    if len(value) > MAX_MESSAGES:
        raise bad(f"'messages' holds {len(value)} messages; at most {MAX_MESSAGES} are served", "messages")
    out = []
    for i, msg in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise bad(f"{where} must be an object", where)
        role = msg.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise bad(f"{where}.role must be one of {', '.join(sorted(ROLES))}", f"{where}.role")
        out.append((ROLES[role], _content(msg.get("content"), where)))
    return tuple(out)


def _stream_flags(data: dict[str, Any]) -> tuple[bool, bool]:
    stream = data.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad("'stream' must be true or false", "stream")
    options = data.get("stream_options")
    if options is None:
        return stream, False
    if not isinstance(options, dict):
        raise bad("'stream_options' must be an object", "stream_options")
    usage = options.get("include_usage", False)
    if not isinstance(usage, bool):
        raise bad("'stream_options.include_usage' must be true or false", "stream_options.include_usage")
    return stream, usage


def _unsupported(data: dict[str, Any], names: tuple[str, ...]) -> None:
    for name in names:
        if data.get(name) not in (None, False, [], 0):
            raise bad(f"'{name}' is not supported by this server", name, code="unsupported_parameter")


def parse_chat(data: dict[str, Any], model: str) -> Job:
    """A ``/v1/chat/completions`` body as a job (``model``: the id the caller's name resolved to)."""
    _unsupported(data, ("tools", "functions", "logprobs", "top_logprobs", "logit_bias"))
    stream, usage = _stream_flags(data)
    return Job("chat", model, sampling(data), stream, usage, messages=_messages(data), stops=_stops(data))


def parse_completion(data: dict[str, Any], model: str) -> Job:
    """A ``/v1/completions`` body as a job (one string prompt, or a list holding one)."""
    _unsupported(data, ("suffix", "logprobs", "logit_bias", "echo"))
    if data.get("best_of") not in (None, 1):
        raise bad("'best_of' must be 1", "best_of")
    prompt = data.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise bad("'prompt' must be a string (or a list of one string)", "prompt")
    stream, usage = _stream_flags(data)
    return Job("completion", model, sampling(data, COMPLETIONS_DEFAULT_MAX_TOKENS), stream, usage,
               prompt=prompt, stops=_stops(data))


# ---------------------------------------------------------------- responses


def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def reply_body(job: Job, rid: str, created: int, text: str, finish: str, use: dict[str, int]) -> dict[str, Any]:
    """The whole (not streamed) answer."""
    if job.kind == "chat":
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                  "logprobs": None, "finish_reason": finish}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": job.model, "choices": [choice], "usage": use}


def chunk_body(job: Job, rid: str, created: int, *, text: str | None = None, role: bool = False,
               finish: str | None = None, use: dict[str, int] | None = None, empty: bool = False) -> dict[str, Any]:
    """One streamed chunk; ``empty`` gives the usage-only final chunk (no choices)."""
    choices: list[dict[str, Any]] = []
    if not empty:
        if job.kind == "chat":
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choices.append({"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish})
        else:
            choices.append({"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish})
    body: dict[str, Any] = {
        "id": rid, "object": "chat.completion.chunk" if job.kind == "chat" else "text_completion",
        "created": created, "model": job.model, "choices": choices,
    }
    if job.include_usage:
        body["usage"] = use
    return body


def models_body(model_id: str, created: int) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created, "owned_by": "fitchat"}]}


def now() -> int:
    return int(time.time())


def sse(payload: dict[str, Any] | str) -> bytes:
    """One server-sent event line (``data: ...``)."""
    text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


class StopScanner:
    """Finds the first stop sequence in a stream of text pieces, holding back only what could begin one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self._hold = max((len(s) for s in stops), default=1) - 1
        self._buf = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """The text now safe to send; sets :attr:`stopped` when a stop sequence was found."""
        if not self.stops:
            return piece
        self._buf += piece
        hits = [i for i in (self._buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            out, self._buf = self._buf[: min(hits)], ""
            return out
        cut = max(0, len(self._buf) - self._hold)
        out, self._buf = self._buf[:cut], self._buf[cut:]
        return out

    def flush(self) -> str:
        out, self._buf = self._buf, ""
        return out
