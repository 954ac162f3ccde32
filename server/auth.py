"""Bearer API-key auth for ``/retrieve``.

Contract:
- The key comes only from ``settings.api_key`` (env ``RADGR_API_KEY``); unset or empty means no auth, and
  ``api_key_dependencies`` returns no dependency at all (the OpenAPI document then shows no security scheme).
- With a key, a request without ``Authorization: Bearer <key>`` or with another key answers 401 (type
  ``authentication_error``, code ``invalid_api_key``, ``WWW-Authenticate: Bearer``) and counts as a rejection
  with reason ``auth``. Keys are compared as sha256 digests, in constant time.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable

from fastapi import Depends, params
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from server.errors import ApiError
from server.metrics import ServerMetrics
from server.settings import ServerSettings


def api_key_digest(settings: ServerSettings) -> bytes | None:
    """sha256 of the configured key; None when no (or an empty) key is configured."""
    if settings.api_key is None or not settings.api_key.get_secret_value():
        return None
    return hashlib.sha256(settings.api_key.get_secret_value().encode()).digest()


def _api_key_checker(expected: bytes, metrics: ServerMetrics) -> Callable[..., Awaitable[None]]:
    bearer = HTTPBearer(auto_error=False, description="Set RADGR_API_KEY on the server to require it.")

    async def require_api_key(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        given = hashlib.sha256((credentials.credentials if credentials else "").encode()).digest()
        if credentials is None or not secrets.compare_digest(given, expected):
            metrics.rejections.labels(reason="auth").inc()
            raise ApiError(401, "a valid bearer API key is required", "authentication_error", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    return require_api_key


def api_key_dependencies(settings: ServerSettings, metrics: ServerMetrics) -> list[params.Depends]:
    """The route dependencies that enforce the key: one when a key is configured, none otherwise."""
    digest = api_key_digest(settings)
    return [] if digest is None else [Depends(_api_key_checker(digest, metrics))]
