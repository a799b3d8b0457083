"""Request ids: one per HTTP request, in every log line of it and in the response.

The id is the caller's `X-Request-ID` header when that is 1 to 128 printable ASCII
characters, so a trace can cross services. Anything else is replaced by a new random
id (32 hex digits), and the replacement is logged. The response always carries the id
used in `X-Request-ID`.
"""

from __future__ import annotations

import logging
import uuid

from flask import Flask, Response, g, request

from .logs import current_request_id

HEADER = "X-Request-ID"
MAX_LENGTH = 128

log = logging.getLogger(__name__)


def init_app(app: Flask) -> None:
    """Register the hooks that set, return and clear the request id."""
    app.before_request(_start)
    app.after_request(_add_header)
    app.teardown_request(_finish)


def is_valid(value: str) -> bool:
    """Return whether `value` can be used as a request id as it is."""
    return 0 < len(value) <= MAX_LENGTH and all(32 < ord(ch) < 127 for ch in value)


def _start() -> None:
    presented = request.headers.get(HEADER)
    request_id = presented if presented is not None and is_valid(presented) else uuid.uuid4().hex
    g.request_id = request_id
    g.request_id_token = current_request_id.set(request_id)
    if presented is not None and request_id != presented:
        log.info("Replaced an invalid %s header with a new id", HEADER)


def _add_header(response: Response) -> Response:
    request_id = g.get("request_id")
    if request_id is not None:
        response.headers[HEADER] = request_id
    return response


def _finish(_error: BaseException | None) -> None:
    token = g.pop("request_id_token", None)
    if token is not None:
        current_request_id.reset(token)
