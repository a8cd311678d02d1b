"""OpenAI-compatible endpoints as model sources: ``openai:MODEL@BASE_URL``.

A vLLM server, a hosted model or any server that speaks OpenAI's completions API answers for a
model of the suite. Such a model has text only, no weights: evaluators reach it through
:meth:`audit.models.handle.ModelHandle.generate`, which for an endpoint is
:meth:`EndpointClient.generate`. Greedy generation is a ``POST {BASE_URL}/chat/completions``
(``/completions`` for raw prompts) with ``temperature = 0``, made with the standard library:

- at most ``max_concurrency`` requests in flight (a thread pool);
- a connection error, a timeout, HTTP 429 or 5xx is retried up to ``max_retries`` times with
  exponential backoff and jitter (``Retry-After`` honoured); any other status fails at once;
  either way the error names the endpoint, the model and the status;
- every reply is cached on disk (the store's ``replies/``), keyed by the SHA-256 of the base URL,
  model, route, prompt and generation parameters, so a rerun does not ask again;
- the API key is read from the environment variable ``api_key_env`` names, at request time,
  and sent as a bearer token; it is in no key, cache file, record or error message (any echo of
  it in a reply is replaced by ``[redacted]``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from audit.errors import AuditError, InputError
from audit.files import atomic_write_text

__all__ = [
    "Endpoint",
    "EndpointClient",
    "EndpointError",
    "Reply",
    "endpoint_problem",
    "parse_endpoint",
    "require_key",
]

SCHEME = "openai:"
DEFAULT_CONCURRENCY = 4
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_RETRIES = 4
BACKOFF_S = 0.5
"""The first retry's wait; each later one doubles it (plus up to as much again of jitter)."""
MAX_BACKOFF_S = 30.0
CACHE_FORMAT = "1"
"""Part of every reply's cache key; bumped when a request or its record changes."""

_SOURCE = re.compile(r"(?P<model>[^\s@][^\s]*?)@(?P<url>https?://\S+)", re.IGNORECASE)
_LOOPBACK = ("localhost", "127.0.0.1", "::1")
_REDACTED = "[redacted]"
_ERROR_BODY_CHARS = 300
_FIELD_CHARS = 200


class EndpointError(AuditError):
    """A request to an endpoint failed (after its retries) or was answered with nonsense."""


def parse_endpoint(rest: str) -> tuple[str, str]:
    """``(model, base_url)`` of the part after ``openai:`` (``MODEL@BASE_URL``); the URL loses
    a trailing ``/`` and its scheme and host are lower-cased. Raises ``ValueError``."""
    if problem := endpoint_problem(rest):
        raise ValueError(problem)
    match = _SOURCE.fullmatch(rest)
    assert match is not None
    parts = urlsplit(match["url"])
    url = f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path}".rstrip("/")
    return match["model"], url


def endpoint_problem(rest: str) -> str | None:
    """What is wrong with the part after ``openai:`` (syntax only, no network), or None."""
    usage = "write 'openai:MODEL@BASE_URL', e.g. 'openai:my-model@http://127.0.0.1:8000/v1'"
    match = _SOURCE.fullmatch(rest)
    if match is None or any(ord(c) < 32 for c in rest):
        return f"'openai:{rest}' does not name a model and a base URL; {usage}"
    try:
        parts = urlsplit(match["url"])
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return f"'openai:{rest}': {match['url']!r} is not a URL; {usage}"
    if not parts.hostname:
        return f"'openai:{rest}': the base URL names no host; {usage}"
    if parts.username is not None or parts.password is not None:
        return (
            f"'openai:{rest}': the base URL holds credentials, which would be written into "
            "results; put the key in an environment variable and name it with api_key_env"
        )
    if parts.query or parts.fragment:
        return f"'openai:{rest}': the base URL cannot have a query or fragment ('?', '#')"
    return None


def require_key(env: str, where: str) -> str:
    """The API key in environment variable ``env``; :class:`InputError` when unset or empty."""
    value = os.environ.get(env, "")
    if not value:
        raise InputError(
            f"{where}: api_key_env = {env!r}, but the environment variable {env} is not set "
            f"(or is empty); export {env}=<the API key> before running. The key is read from "
            "it at request time and never written anywhere."
        )
    return value


@dataclass(frozen=True)
class Endpoint:
    """Where an endpoint model is served and how to talk to it (the key itself is not here)."""

    model: str
    base_url: str
    api_key_env: str | None = None
    max_concurrency: int = DEFAULT_CONCURRENCY
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_retries: int = DEFAULT_RETRIES
    backoff_s: float = BACKOFF_S

    @classmethod
    def from_source(
        cls,
        source: str,
        *,
        api_key_env: str | None = None,
        max_concurrency: int | None = None,
        timeout_s: float | None = None,
        max_retries: int | None = None,
    ) -> Endpoint:
        """The endpoint of an ``openai:MODEL@BASE_URL`` source; ``None``: the defaults."""
        model, url = parse_endpoint(source.removeprefix(SCHEME))
        return cls(
            model,
            url,
            api_key_env,
            DEFAULT_CONCURRENCY if max_concurrency is None else max_concurrency,
            DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s,
            DEFAULT_RETRIES if max_retries is None else max_retries,
        )

    @property
    def label(self) -> str:
        """How messages name it: ``model 'M' at URL``."""
        return f"model {self.model!r} at {self.base_url}"


@dataclass(frozen=True)
class Reply:
    """A reply's text (stripped, as local generation's) and its ``record``: the request sent
    (``url``, ``model``, ``max_tokens``, ``temperature``) and what the server said besides the
    text (``id``, ``model`` it answered as, ``finish_reason``, ``usage``)."""

    text: str
    record: dict[str, Any]


class _Retryable(Exception):
    """A failed attempt worth repeating (connection error, timeout, 429, 5xx)."""

    def __init__(self, message: str, wait_s: float | None = None) -> None:
        super().__init__(message)
        self.wait_s = wait_s


@dataclass
class EndpointClient:
    """Greedy generation from an :class:`Endpoint`, cached under ``cache_dir``."""

    endpoint: Endpoint
    cache_dir: Path | None = None
    _random: random.Random = field(default_factory=random.Random, repr=False)

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        chat: bool = True,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[Reply]:
        """The greedy reply to each prompt, in order: cached ones read, the others asked for
        (each distinct prompt once), ``max_concurrency`` at a time. ``progress(done, total)``
        after each reply. The first request that fails for good stops the rest (the replies
        already received stay cached) and raises :class:`EndpointError`."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        route = "chat/completions" if chat else "completions"
        key = self._key()  # checked before anything is sent
        unique = list(dict.fromkeys(prompts))
        replies: dict[str, Reply] = {}
        for prompt in unique:
            cached = self._read_cache(self._cache_key(route, prompt, max_new_tokens))
            if cached is not None:
                replies[prompt] = cached
        todo = [p for p in unique if p not in replies]
        total = len(unique)
        if progress is not None and replies:
            progress(len(replies), total)
        if todo:
            workers = min(self.endpoint.max_concurrency, len(todo))
            with ThreadPoolExecutor(workers, thread_name_prefix="audit-endpoint") as pool:
                futures: dict[Future[Reply], str] = {
                    pool.submit(self._ask, route, p, max_new_tokens, key): p for p in todo
                }
                pending = set(futures)
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    failed = [f for f in finished if f.exception() is not None]
                    for future in (f for f in finished if f.exception() is None):
                        prompt = futures[future]
                        replies[prompt] = future.result()
                        cache_key = self._cache_key(route, prompt, max_new_tokens)
                        self._write_cache(cache_key, replies[prompt])
                        if progress is not None:
                            progress(len(replies), total)
                    if failed:
                        pool.shutdown(wait=True, cancel_futures=True)
                        failed[0].result()  # raises the request's error
        return [replies[p] for p in prompts]

    # --- one request ----------------------------------------------------------------------

    def _key(self) -> str | None:
        env = self.endpoint.api_key_env
        if env is None:
            return None
        try:
            return require_key(env, self.endpoint.label)
        except InputError as e:  # unset since the run was planned
            raise EndpointError(str(e)) from None

    def _ask(self, route: str, prompt: str, max_new_tokens: int, key: str | None) -> Reply:
        """One request, retried on connection errors, timeouts, 429 and 5xx."""
        ep = self.endpoint
        url = f"{ep.base_url}/{route}"
        body: dict[str, Any] = {"model": ep.model, "max_tokens": max_new_tokens, "temperature": 0}
        if route == "chat/completions":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        attempts = ep.max_retries + 1
        for attempt in range(attempts):
            try:
                payload = self._post(url, body, key)
            except _Retryable as e:
                if attempt + 1 == attempts:
                    raise EndpointError(
                        f"{ep.label}: {e} (gave up after {attempts} attempt"
                        f"{'s' if attempts > 1 else ''}; max_retries = {ep.max_retries})"
                    ) from None
                time.sleep(self._backoff(attempt, e.wait_s))
                continue
            return self._reply(url, body, payload, key)
        raise AssertionError("unreachable")

    def _post(self, url: str, body: dict[str, Any], key: str | None) -> Any:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(
            url, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with _opener(url).open(request, timeout=self.endpoint.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            text = _redact(_excerpt(e), key)
            message = f"{url} answered HTTP {e.code}" + (f": {text}" if text else "")
            if e.code == 429 or e.code >= 500:
                raise _Retryable(message, _retry_after(e.headers.get("Retry-After"))) from None
            hint = ""
            if e.code in (401, 403):
                hint = (
                    f" (check the key in ${self.endpoint.api_key_env})"
                    if self.endpoint.api_key_env
                    else " (the endpoint wants a key: name its environment variable with "
                    "api_key_env)"
                )
            raise EndpointError(f"{self.endpoint.label}: {message}{hint}") from None
        except (urllib.error.URLError, OSError) as e:  # refused, reset, timed out, DNS
            reason = getattr(e, "reason", e)
            raise _Retryable(f"could not reach {url}: {_redact(str(reason), key)}") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise EndpointError(
                f"{self.endpoint.label}: {url} answered with something that is not JSON"
            ) from None

    def _reply(self, url: str, body: dict[str, Any], payload: Any, key: str | None) -> Reply:
        """The text and record of an OpenAI-style reply; :class:`EndpointError` if it is none."""
        try:
            choice = payload["choices"][0]
            text = choice["message"]["content"] if "messages" in body else choice["text"]
            if text is None:
                text = ""
            if not isinstance(text, str):
                raise TypeError(text)
        except (KeyError, IndexError, TypeError):
            raise EndpointError(
                f"{self.endpoint.label}: {url} did not answer as an OpenAI-compatible server "
                "(no choices[0].message.content or choices[0].text)"
            ) from None
        usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
        served: dict[str, Any] = {
            "id": _short(payload.get("id"), key),
            "model": _short(payload.get("model"), key),
            "finish_reason": _short(choice.get("finish_reason"), key),
            "usage": {
                k: v
                for k in ("prompt_tokens", "completion_tokens", "total_tokens")
                if isinstance(v := usage.get(k), int) and not isinstance(v, bool)
            },
        }
        request = {
            "url": url,
            "model": body["model"],
            "max_tokens": body["max_tokens"],
            "temperature": body["temperature"],
        }
        return Reply(_redact(text, key).strip(), {"request": request, "reply": served})

    def _backoff(self, attempt: int, wait_s: float | None) -> float:
        if wait_s is not None:
            return min(wait_s, MAX_BACKOFF_S)
        base = self.endpoint.backoff_s * 2**attempt
        return float(min(base + self._random.uniform(0, base), MAX_BACKOFF_S))

    # --- the reply cache ------------------------------------------------------------------

    def _cache_key(self, route: str, prompt: str, max_new_tokens: int) -> str:
        ep = self.endpoint
        what = {
            "format": CACHE_FORMAT,
            "base_url": ep.base_url,
            "model": ep.model,
            "route": route,
            "prompt": prompt,
            "parameters": {"max_tokens": max_new_tokens, "temperature": 0},
        }
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()

    def _cache_file(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / key[:2] / f"{key}.json"

    def _read_cache(self, key: str) -> Reply | None:
        """The cached reply for ``key``; ``None`` when absent or unreadable (asked again)."""
        path = self._cache_file(key)
        if path is None or not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data["key"] != key or not isinstance(data["text"], str):
                return None
            return Reply(data["text"], dict(data["record"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _write_cache(self, key: str, reply: Reply) -> None:
        path = self._cache_file(key)
        if path is None:
            return
        data = {"key": key, "text": reply.text, "record": reply.record}
        atomic_write_text(path, json.dumps(data))  # ASCII: a lone surrogate is escaped


def _opener(url: str) -> urllib.request.OpenerDirector:
    """An opener for ``url``: the environment's proxies, except for a loopback host."""
    if urlsplit(url).hostname in _LOOPBACK:
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener()


def _excerpt(error: urllib.error.HTTPError) -> str:
    with contextlib.suppress(Exception):
        text = error.read(_ERROR_BODY_CHARS * 4).decode("utf-8", "replace")
        text = " ".join(text.split())
        return text[:_ERROR_BODY_CHARS] + ("…" if len(text) > _ERROR_BODY_CHARS else "")
    return ""


def _retry_after(value: str | None) -> float | None:
    """Seconds of a ``Retry-After`` header given in seconds (a date is ignored)."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 <= seconds < float("inf") else None


def _redact(text: str, key: str | None) -> str:
    return text.replace(key, _REDACTED) if key else text


def _short(value: Any, key: str | None) -> str | None:
    """A reply's string field, redacted and cut short; ``None`` for anything else."""
    return _redact(value, key)[:_FIELD_CHARS] if isinstance(value, str) else None
