"""Bounded reading of streamed HTTP response bodies.

The timeout that requests passes to urllib3 limits each socket read, not the whole body,
so a server that sends one byte just inside every read timeout can hold the caller for as
long as it likes. read_limited_body stops at a deadline and at a maximum size instead.
The response must come from a request made with `stream=True`; closing it stays the
caller's job.
"""

from __future__ import annotations

import time

import requests
import urllib3

_CHUNK_BYTES = 16 * 1024


class BodyReadError(Exception):
    """The body could not be read. The message names the cause and contains no body."""


class BodyTooLarge(BodyReadError):
    """The body is larger than the maximum size the caller allowed."""


class BodyTimedOut(BodyReadError):
    """The body was still arriving at the deadline, or a read timed out."""


def read_limited_body(
    response: requests.Response,
    *,
    deadline: float,
    max_bytes: int,
    cap_read_timeout: bool = False,
) -> bytes:
    """Read the whole body, raising a BodyReadError subclass past `max_bytes` or `deadline`.

    `deadline` is a time.monotonic() value. read1() returns as soon as some bytes arrive,
    so a server that sends one byte at a time meets the deadline check. iter_content()
    would block until a whole chunk came. Without `cap_read_timeout`, the last read may
    wait one full read timeout past the deadline. With it, each read waits at most until
    the deadline, by lowering the timeout of the connection's socket. urllib3 resets that
    timeout when it reuses the connection for the next request.
    """
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            if cap_read_timeout:
                _cap_socket_timeout(response, deadline)
            chunk = response.raw.read1(_CHUNK_BYTES, decode_content=True)
            if not chunk:
                break

            size += len(chunk)
            if size > max_bytes:
                raise BodyTooLarge(f"the body is larger than {max_bytes} bytes")
            if time.monotonic() > deadline:
                raise BodyTimedOut("timed out while reading the body")
            chunks.append(chunk)
    except urllib3.exceptions.ReadTimeoutError as exc:
        raise BodyTimedOut("timed out while reading the body") from exc
    except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
        raise BodyReadError(f"reading the body failed ({type(exc).__name__})") from exc
    return b"".join(chunks)


def _cap_socket_timeout(response: requests.Response, deadline: float) -> None:
    """Make the next socket read wait no longer than until `deadline`.

    Responses without a live socket, such as requests-mock's, are left as they are.
    """
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise BodyTimedOut("timed out while reading the body")

    sock = getattr(getattr(response.raw, "connection", None), "sock", None)
    if sock is not None:
        sock.settimeout(remaining)
