"""Flask application factory and HTTP routes of iris-token-broker.

Routes read their input, validate it once, act through the services on `app.extensions`,
and respond. Every error is a BrokerError subclass or a werkzeug HTTPException, and one
handler turns both into JSON, so no route builds an error response itself.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Callable

import requests
from flask import Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from broker import cli, metrics, openapi, request_id
from broker.config import Settings, load_settings
from broker.credentials import CredentialStore, SaveOutcome
from broker.errors import (
    BrokerError,
    Forbidden,
    InvalidRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from broker.identity import HEADER as IDENTITY_HEADER
from broker.identity import IdentityVerifier, VerifiedIdentity, build_verifier
from broker.install import (
    EVENT_INSTALLED,
    EVENT_UNINSTALLED,
    InstallEvent,
    canonical_account_id,
    parse_install_event,
)
from broker.internal_auth import require_internal_key
from broker.scopes import ScopePolicy
from broker.tokens import TokenBroker
from broker.trackunit import TokenClient
from broker.vault_auth import make_authenticator, make_vault_client

log = logging.getLogger("broker.app")

_TRUE_WORDS = ("1", "true", "yes")
_FALSE_WORDS = ("0", "false", "no")
_TOKEN_QUERY_PARAMETERS = frozenset({"scope", "min_ttl", "refresh"})
# Reasons that save_delivery() wrote nothing, keyed by the status it returned.
_SKIPPED_DELIVERIES = {
    "unchanged": "a repeat of the delivery already stored",
    "ignored_stale": "older than the delivery already stored",
}


@dataclass
class Services:
    """The long-lived objects one process shares across requests."""

    settings: Settings
    store: CredentialStore
    tokens: TokenBroker
    identity: IdentityVerifier | None


def create_app(
    settings: Settings | None = None,
    *,
    http_session: requests.Session | None = None,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], None] | None = None,
    executor: Executor | None = None,
) -> Flask:
    """Build the app. Tests pass settings, a requests session, a fake clock and sleep,
    and an executor for the token cache's background refreshes.

    Raises ConfigError when settings come from the environment and one is invalid.
    """
    settings = settings or load_settings()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.install_max_body_bytes
    app.json.sort_keys = False

    app.extensions["broker"] = _build_services(settings, http_session, clock, sleep, executor)
    request_id.init_app(app)
    cli.init_app(app)
    _register_routes(app, settings)
    app.after_request(_record_metrics)
    app.register_error_handler(BrokerError, _broker_error_response)
    app.register_error_handler(HTTPException, _http_error_response)
    app.register_error_handler(Exception, _unexpected_error_response)
    return app


def _build_services(
    settings: Settings,
    http_session: requests.Session | None,
    clock: Callable[[], float] | None,
    sleep: Callable[[float], None] | None,
    executor: Executor | None,
) -> Services:
    vault_client = make_vault_client(settings)
    store = CredentialStore(
        vault_client,
        make_authenticator(settings),
        mount=settings.vault_kv_mount,
        prefix=settings.vault_kv_prefix,
    )
    client_options = {"session": http_session}
    if sleep is not None:
        client_options["sleep"] = sleep
    token_client = TokenClient(
        settings.trackunit_token_url,
        timeout=settings.trackunit_timeout,
        max_retries=settings.trackunit_max_retries,
        max_retry_after=settings.trackunit_max_retry_after,
        default_lifetime=settings.token_default_lifetime,
        max_lifetime=settings.token_max_lifetime,
        **client_options,
    )
    # A waiter must outlast the slowest fetch it may join: a Vault read plus every
    # attempt at the token endpoint with its longest delay.
    attempts = settings.trackunit_max_retries + 1
    wait_timeout = 2 * settings.vault_timeout + attempts * (
        settings.trackunit_timeout + settings.trackunit_max_retry_after
    )
    broker_options = {"clock": clock} if clock is not None else {}
    tokens = TokenBroker(
        store,
        token_client,
        scopes=ScopePolicy(settings.trackunit_scopes, settings.trackunit_optional_scopes),
        expiry_margin=settings.token_expiry_margin,
        max_size=settings.token_cache_size,
        wait_timeout=wait_timeout,
        refresh_ahead_fraction=settings.token_refresh_ahead_fraction,
        refresh_retry_seconds=settings.token_refresh_retry_seconds,
        coherence_seconds=settings.token_coherence_seconds,
        invalid_client_backoff=settings.token_invalid_client_backoff,
        refresh_workers=settings.token_refresh_workers,
        executor=executor,
        **broker_options,
    )
    identity = build_verifier(settings, clock=clock)
    return Services(settings=settings, store=store, tokens=tokens, identity=identity)


def _services() -> Services:
    return current_app.extensions["broker"]


def _register_routes(app: Flask, settings: Settings) -> None:
    app.add_url_rule(
        settings.appinstall_path, "appinstall", _appinstall, methods=["POST"]
    )
    app.add_url_rule("/token/<path:account_id>", "token", _token, methods=["GET"])
    app.add_url_rule("/healthz", "healthz", _healthz, methods=["GET"])
    app.add_url_rule("/readyz", "readyz", _readyz, methods=["GET"])
    app.add_url_rule("/metrics", "metrics", _metrics, methods=["GET"])
    app.add_url_rule("/openapi.json", "openapi", _openapi, methods=["GET"])


def _appinstall() -> tuple[Response, int]:
    """Store the credentials of an installing account (Trackunit's tokenCallback)."""
    services = _services()
    body = _read_json_body()

    event = parse_install_event(body)
    g.callback_type = event.type
    identity = _verify_identity(services, event)

    expected_app = services.settings.iris_app_id
    if expected_app and event.iris_app_id != expected_app:
        log.warning(
            "Rejected %s callback for account %s: irisAppId %r is not %r",
            event.type,
            event.account_id,
            event.iris_app_id,
            expected_app,
        )
        raise Forbidden(
            f"irisAppId does not match this service's IRIS_APP_ID ({expected_app})",
            field="irisAppId",
        )

    if event.type == EVENT_UNINSTALLED:
        return _uninstall(services, event, identity)
    if event.type != EVENT_INSTALLED:
        log.info("Ignored callback of type %r for account %s", event.type, event.account_id)
        return jsonify(status="ignored", type=event.type, accountId=event.account_id), 202

    outcome = _store_credentials(services, event, identity)
    if outcome.status != "installed":
        log.info(
            "Kept credentials of account %s at version %d: the callback is %s",
            event.account_id,
            outcome.version,
            _SKIPPED_DELIVERIES[outcome.status],
        )
        return jsonify(
            status=outcome.status, accountId=event.account_id, version=outcome.version
        ), 200

    evicted = services.tokens.evict(event.account_id)

    log.info(
        "Stored credentials for account %s as version %d (%d cached token(s) dropped)",
        event.account_id,
        outcome.version,
        evicted,
    )
    return jsonify(status="installed", accountId=event.account_id, version=outcome.version), 200


def _verify_identity(services: Services, event: InstallEvent) -> VerifiedIdentity | None:
    """Check the callback's Trackunit-Identity header, or return None when the check is off."""
    if services.identity is None:
        return None
    return services.identity.verify(request.headers.get(IDENTITY_HEADER), event)


def _store_credentials(
    services: Services, event: InstallEvent, identity: VerifiedIdentity | None
) -> SaveOutcome:
    """Write the credentials, skipping stale or repeated deliveries when the token is known."""
    if identity is None:
        version = services.store.save(
            event.account_id,
            client_id=event.client_id,
            client_secret=event.client_secret,
            iris_app_id=event.iris_app_id,
        )
        return SaveOutcome("installed", version)
    return services.store.save_delivery(
        event.account_id,
        client_id=event.client_id,
        client_secret=event.client_secret,
        iris_app_id=event.iris_app_id,
        issued_at=identity.issued_at,
    )


def _uninstall(
    services: Services, event: InstallEvent, identity: VerifiedIdentity | None
) -> tuple[Response, int]:
    """Soft-delete the account's latest credentials and drop its cached tokens.

    Idempotent: an account with no live credentials gets 200 `not_installed`.
    The deleted version stays in Vault, so an operator can undelete it. An uninstall
    signed before the delivery that wrote the live version is ignored as stale.
    """
    if identity is not None and services.store.delivery_is_stale(
        event.account_id, identity.issued_at
    ):
        log.info(
            "Ignored uninstall for account %s: a newer install is stored", event.account_id
        )
        return jsonify(status="ignored_stale", accountId=event.account_id), 200

    version = services.store.delete_latest(event.account_id)
    evicted = services.tokens.evict(event.account_id)

    if version is None:
        log.info("Uninstall for account %s: no live credentials to delete", event.account_id)
        return jsonify(status="not_installed", accountId=event.account_id), 200
    log.info(
        "Uninstalled account %s: deleted version %d (%d cached token(s) dropped)",
        event.account_id,
        version,
        evicted,
    )
    return jsonify(status="uninstalled", accountId=event.account_id, version=version), 200


def _token(account_id: str) -> Response:
    """Return a valid access token for the account to an internal caller.

    Query parameters: `scope` is a space-separated subset of the configured scopes, and
    without it the token covers every scope the account granted. `min_ttl` is the number
    of seconds the token must still be valid. `refresh=true` skips the cached token.
    """
    services = _services()
    require_internal_key(request.headers.get("Authorization"), services.settings.internal_api_keys)
    canonical = canonical_account_id(account_id)
    if canonical is None:
        raise InvalidRequest(
            "accountId in the path must be a UUID such as 6b5cb246-7945-4bb6-bec5-2a1413ffd1b3",
            field="accountId",
        )
    scopes, min_ttl, force_refresh = None, 0, False
    # Parsing request.args costs about 3% of a cache hit (py-spy), and most callers send none.
    if request.query_string:
        _reject_unknown_parameters(_TOKEN_QUERY_PARAMETERS)
        scopes = services.tokens.scopes.parse_request(_single_arg("scope"))
        min_ttl = _min_ttl(services.settings.token_max_lifetime)
        force_refresh = _flag("refresh")

    try:
        grant = services.tokens.get(
            canonical, scopes, min_ttl=min_ttl, force_refresh=force_refresh
        )
    except BrokerError:
        metrics.record_cache_lookup(hit=False)
        raise
    metrics.record_cache_lookup(hit=grant.cache_hit)

    # Cache hits log at DEBUG. Under load, an INFO line per hit took about a third of a
    # worker's time in py-spy (bench/run.py), and the broker already logs each fetch at INFO.
    log.log(
        logging.DEBUG if grant.cache_hit else logging.INFO,
        "Served token for account %s (%s, %d s left)",
        canonical,
        "cached" if grant.cache_hit else "fetched",
        grant.expires_in,
    )
    response = jsonify(
        access_token=grant.access_token,
        token_type="Bearer",
        expires_in=grant.expires_in,
        scope=grant.scope,
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


def _healthz() -> Response:
    """Report that the process is up. Checks nothing else, so restarts stay rare."""
    return jsonify(status="ok")


def _readyz() -> tuple[Response, int]:
    """Report whether Vault is reachable, unsealed and accepts the service's token."""
    reason = _services().store.check_ready()
    if reason is not None:
        return jsonify(status="unavailable", reason=reason), 503
    return jsonify(status="ready"), 200


def _metrics() -> Response:
    """Return the Prometheus metrics of every worker process to an internal caller."""
    require_internal_key(request.headers.get("Authorization"), _services().settings.internal_api_keys)
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)


def _openapi() -> Response:
    """Return the OpenAPI document of this service to an internal caller."""
    services = _services()
    require_internal_key(request.headers.get("Authorization"), services.settings.internal_api_keys)
    return jsonify(openapi.build_document(services.settings.appinstall_path))


def _record_metrics(response: Response) -> Response:
    """Count the outcome of a token request or an install callback from its response."""
    if request.endpoint == "token":
        outcome = "served" if response.status_code == 200 else g.get("error_code", "error")
        metrics.record_token_request(outcome)
    elif request.endpoint == "appinstall" and request.method == "POST":
        if response.status_code < 300:
            outcome = (response.get_json(silent=True) or {}).get("status", "ok")
        else:
            outcome = g.get("error_code", "error")
        metrics.record_callback(g.get("callback_type"), outcome)
    return response


def _read_json_body() -> object:
    """Decode the request body as JSON, raising InvalidRequest, 413 or 415 errors."""
    if request.mimetype != "application/json":
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, not {request.mimetype or 'missing'}",
            field="Content-Type",
        )
    limit = _services().settings.install_max_body_bytes
    if request.content_length is not None:
        if request.content_length > limit:
            raise _too_large()
        raw = request.get_data(cache=False)
    elif request.environ.get("wsgi.input_terminated"):
        # A chunked body has no Content-Length, and werkzeug would cut it at the limit
        # silently, so the raw stream is read one byte past the limit instead.
        raw = request.environ["wsgi.input"].read(limit + 1)
        if len(raw) > limit:
            raise _too_large()
    else:
        raw = b""
    if not raw.strip():
        raise InvalidRequest("The body is empty: send the install event as a JSON object", field="body")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest("The body is not valid JSON", field="body") from exc


def _flag(name: str) -> bool:
    raw = _single_arg(name)
    if raw is None:
        return False
    if raw.lower() in _TRUE_WORDS:
        return True
    if raw.lower() in _FALSE_WORDS:
        return False
    raise InvalidRequest(f"{name} must be true or false (or 1/0, yes/no)", field=name)


def _reject_unknown_parameters(known: frozenset[str]) -> None:
    """Raise InvalidRequest naming a query parameter the endpoint does not take.

    A typo such as `scopes=` would otherwise be ignored silently and widen the token.
    """
    unknown = sorted(set(request.args) - known)
    if unknown:
        raise InvalidRequest(
            f"Unknown query parameter {unknown[0][:40]!r}: use {', '.join(sorted(known))}",
            field=unknown[0][:40],
        )


def _single_arg(name: str) -> str | None:
    """Return the query parameter's value, None when absent; raise if it is sent twice."""
    value = request.args.get(name)
    if value is not None and len(request.args.getlist(name)) > 1:
        raise InvalidRequest(f"{name} is sent more than once: send it once", field=name)
    return value


def _min_ttl(maximum: int) -> int:
    raw = _single_arg("min_ttl")
    if raw is None:
        return 0
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9) or int(raw) > maximum:
        raise InvalidRequest(
            f"min_ttl must be a whole number of seconds from 0 to {maximum}, not {raw[:20]!r}",
            field="min_ttl",
        )
    return int(raw)


def _too_large() -> PayloadTooLarge:
    limit = _services().settings.install_max_body_bytes
    return PayloadTooLarge(f"The body is larger than the limit of {limit} bytes", field="body")


def _broker_error_response(error: BrokerError) -> tuple[Response, int]:
    g.error_code = error.code
    if error.status >= 500:
        log.warning("Request to %s failed with %d %s", request.path, error.status, error.code)
    elif not error.logged:
        log.info("Request to %s rejected with %d %s", request.path, error.status, error.code)
    response = jsonify(error.to_dict())
    if error.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, int(error.retry_after + 0.5)))
    return response, error.status


def _http_error_response(error: HTTPException) -> tuple[Response, int]:
    if isinstance(error, RequestEntityTooLarge):
        return _broker_error_response(_too_large())
    status = error.code or 500
    code = (error.name or "error").lower().replace(" ", "_")
    g.error_code = code
    response = jsonify(error=code, message=error.description)
    if status == 405 and error.valid_methods:
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response, status


def _unexpected_error_response(error: Exception) -> tuple[Response, int]:
    if isinstance(error, HTTPException):
        return _http_error_response(error)
    log.exception("Unhandled error on %s %s", request.method, request.path)
    g.error_code = "internal_error"
    return jsonify(error="internal_error", message="An unexpected error occurred"), 500
