"""The one error body of the server, ``{"error": {"message", "type", "param", "code"}}``, and the handlers
that map every failure onto it.

Contract:
- :class:`ApiError` carries a status, message, type, param and code; raising it anywhere in a route answers it.
- Validation failures answer 422 with messages built from the validator's structured errors (field path, bound,
  given value, truncated) — never ``str(exc)``, which can leak internals.
- Any other exception answers 500 with a fixed message; the traceback goes to the log only.
- A client that went away while its body was being read is recorded as ``CLIENT_CLOSED_STATUS`` (nobody reads it).
- ``error_response(...)`` builds the JSON response; ``install_error_handlers(app)`` registers the handlers.
- ``ERROR_RESPONSES`` describes the error answers of ``/retrieve`` in the OpenAPI document;
  ``CLIENT_CLOSED_STATUS`` (499) is the status a request whose client went away is recorded with.
Status codes and their meaning: docs/serving.md "HTTP API".
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from server import schemas

logger = logging.getLogger(__name__)

_GIVEN_MAX_CHARS = 40
CLIENT_CLOSED_STATUS = 499  # nginx's "client closed request": recorded in metrics, never seen by a client

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": schemas.ErrorResponse, "description": "API key configured and missing or wrong."},
    413: {"model": schemas.ErrorResponse, "description": "Body larger than the server's limit."},
    422: {"model": schemas.ErrorResponse, "description": "A field violates its type or bound (named in the body)."},
    500: {"model": schemas.ErrorResponse, "description": "A bug; no internals in the body."},
    503: {"model": schemas.ErrorResponse, "description": "Queue full, draining or not ready; see Retry-After.",
          "headers": {"Retry-After": {"description": "Seconds to wait before retrying.",
                                      "schema": {"type": "integer"}}}},
    504: {"model": schemas.ErrorResponse, "description": "The request's deadline passed before it was served."},
}


class ApiError(Exception):
    """An error answered to the client as it is."""

    def __init__(self, status: int, message: str, type_: str, *, param: str | None = None,
                 code: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = dict(headers or {})


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(status: int, message: str, type_: str, param: str | None = None, code: str | None = None,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, param, code), status_code=status, headers=dict(headers or {}))


def _given(value: Any) -> str:
    if isinstance(value, list | dict | bytes):
        return f"{type(value).__name__} of {len(value)}"
    text = repr(value)
    return text if len(text) <= _GIVEN_MAX_CHARS else text[: _GIVEN_MAX_CHARS - 3] + "..."


def field_path(loc: Sequence[Any]) -> str | None:
    """Dotted field path of a validator location, without the leading ``body``/``query`` part."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header"}:
        parts = parts[1:]
    # dict-key errors carry a "[key]" marker part
    parts = [p for p in parts if p != "[key]"]
    return ".".join(parts) or None


def validation_message(err: Mapping[str, Any]) -> str:
    """One human message from one pydantic error: names the field and the bound (TGI style)."""
    field = field_path(err.get("loc", ())) or "body"
    kind = str(err.get("type", ""))
    ctx = err.get("ctx") or {}
    given = err.get("input")
    name = f"`{field}`"
    length = len(given) if isinstance(given, str | list | dict) else None
    match kind:
        case "less_than_equal":
            return f"{name} must be ≤ {ctx.get('le')}, given {_given(given)}"
        case "less_than":
            return f"{name} must be < {ctx.get('lt')}, given {_given(given)}"
        case "greater_than_equal":
            return f"{name} must be ≥ {ctx.get('ge')}, given {_given(given)}"
        case "greater_than":
            return f"{name} must be > {ctx.get('gt')}, given {_given(given)}"
        case "string_too_long":
            return f"{name} must be at most {ctx.get('max_length')} characters, given {length}"
        case "string_too_short":
            return f"{name} must be at least {ctx.get('min_length')} characters, given {length}"
        case "too_long":
            return f"{name} must hold at most {ctx.get('max_length')} entries, given {length}"
        case "too_short":
            return f"{name} must hold at least {ctx.get('min_length')} entries, given {length}"
        case "missing":
            return f"{name} is required"
        case "extra_forbidden":
            return f"{name} is not a known field"
        case "json_invalid":
            return "the body is not valid JSON"
        case "int_type" | "int_parsing" | "int_from_float":
            return f"{name} must be an integer, given {_given(given)}"
        case "bool_type" | "bool_parsing":
            return f"{name} must be a boolean, given {_given(given)}"
        case "string_unicode":
            return f"{name} must be valid Unicode text (no lone surrogates)"
        case "string_type":
            return f"{name} must be a string, given {_given(given)}"
        case "list_type":
            return f"{name} must be a list, given {_given(given)}"
        case "dict_type" | "model_type" | "model_attributes_type":
            return f"{name} must be an object, given {_given(given)}"
        case _:
            return f"{name} is invalid ({kind})"


def _validation_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if not errors:
        return error_response(422, "the request is invalid", "invalid_request_error", code="invalid")
    first = errors[0]
    message = "; ".join(validation_message(e) for e in errors[:5])
    if len(errors) > 5:
        message += f"; and {len(errors) - 5} more"
    kind = str(first.get("type", "invalid"))
    param = None if kind == "json_invalid" else field_path(first.get("loc", ()))  # a JSON error's loc is an offset
    return error_response(422, message, "invalid_request_error", param, kind)


def _api_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.type, exc.param, exc.code, exc.headers)


_HTTP_TYPES = {401: "authentication_error", 404: "not_found_error", 405: "invalid_request_error",
               413: "invalid_request_error", 503: "overloaded_error", 504: "timeout_error"}


def _http_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    if status == 400 and isinstance(exc.__cause__, ClientDisconnect):  # gone mid-body: nobody reads the answer
        return error_response(CLIENT_CLOSED_STATUS, "the client went away", "invalid_request_error",
                              code="client_closed")
    if status == 400:  # FastAPI's "error parsing the body" (e.g. not UTF-8): a schema violation like any other
        return error_response(422, "the body must be a JSON object (UTF-8)", "invalid_request_error",
                              code="body_unparsable")
    message = {404: "no such endpoint", 405: "method not allowed"}.get(status, "the request failed")
    type_ = _HTTP_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return error_response(status, message, type_, code=str(status), headers=exc.headers)


def _unhandled_handler(_: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal server error", "server_error", code="internal")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(ApiError, _api_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    app.add_exception_handler(Exception, _unhandled_handler)
