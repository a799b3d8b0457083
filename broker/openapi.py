"""The OpenAPI 3.0 document of the service, served at `/openapi.json`.

It is built from code rather than kept as a static file, because the callback path is
configurable (APPINSTALL_PATH). tests/test_openapi.py checks that every route of the app
is documented and runs schemathesis against the document, so it stays true.
"""

from __future__ import annotations

from typing import Any

_JSON = "application/json"
_ACCOUNT_ID_EXAMPLE = "6b5cb246-7945-4bb6-bec5-2a1413ffd1b3"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_response(description: str, schema: str, headers: dict | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "headers": {"X-Request-ID": {"$ref": "#/components/headers/RequestId"}, **(headers or {})},
        "content": {_JSON: {"schema": _ref(schema)}},
    }
    return response


def _error(description: str) -> dict[str, Any]:
    return _json_response(description, "Error")


_UNAVAILABLE = _json_response(
    "Vault is unreachable, sealed or denies the service (`vault_unavailable`), or the token "
    "endpoint keeps returning 429 (`upstream_rate_limited`). Safe to retry later.",
    "Error",
    headers={"Retry-After": {"$ref": "#/components/headers/RetryAfter"}},
)


def build_document(appinstall_path: str = "/appinstall") -> dict[str, Any]:
    """Return the OpenAPI document for a service whose callback is at `appinstall_path`."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "iris-token-broker",
            "version": "1.0.0",
            "description": (
                "Receives Trackunit Iris App install callbacks, keeps each account's OAuth "
                "client credentials in Vault, and serves access tokens to internal callers."
            ),
        },
        "paths": {
            appinstall_path: {"post": _appinstall_operation()},
            "/token/{accountId}": {"get": _token_operation()},
            "/healthz": {"get": _healthz_operation()},
            "/readyz": {"get": _readyz_operation()},
            "/metrics": {"get": _metrics_operation()},
            "/openapi.json": {"get": _openapi_operation()},
        },
        "components": {
            "securitySchemes": {
                "internalKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "One of the service's INTERNAL_API_KEYS.",
                }
            },
            "headers": {
                "RequestId": {
                    "description": "The request's X-Request-ID, or a new id when it had none or an invalid one.",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 128},
                },
                "RetryAfter": {
                    "description": "Seconds to wait before retrying, when known.",
                    "schema": {"type": "string"},
                },
            },
            "schemas": _schemas(),
        },
    }


def _appinstall_operation() -> dict[str, Any]:
    return {
        "operationId": "appinstall",
        "summary": "Receive an app lifecycle callback from Trackunit",
        "description": (
            "INSTALLED stores the account's credentials as a new KV version. UNINSTALLED "
            "soft-deletes the latest version and drops cached tokens. Other types are "
            "acknowledged with 202 and change nothing."
        ),
        "requestBody": {"required": True, "content": {_JSON: {"schema": _ref("InstallEvent")}}},
        "responses": {
            "200": _json_response("The event was applied.", "InstallResult"),
            "202": _json_response("An event type the service does not act on.", "IgnoredEvent"),
            "400": _error("The body is invalid. `field` names the bad input."),
            "401": _error("The callback could not be authenticated."),
            "403": _error("irisAppId is not this service's IRIS_APP_ID."),
            "413": _error("The body is larger than INSTALL_MAX_BODY_BYTES."),
            "415": _error("The body is not sent as application/json."),
            "503": _UNAVAILABLE,
        },
    }


def _token_operation() -> dict[str, Any]:
    return {
        "operationId": "getToken",
        "summary": "Return a valid access token for an installed account",
        "security": [{"internalKey": []}],
        "parameters": [
            {
                "name": "accountId",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "format": "uuid", "example": _ACCOUNT_ID_EXAMPLE},
            },
            {
                "name": "refresh",
                "in": "query",
                "description": "Fetch a new token even when a cached one is fresh.",
                "schema": {"type": "boolean", "default": False},
            },
            {
                "name": "scope",
                "in": "query",
                "description": "Space-separated subset of TRACKUNIT_SCOPES. Default: all of them.",
                "schema": {"type": "string", "maxLength": 1024},
            },
            {
                "name": "min_ttl",
                "in": "query",
                "description": "Minimum seconds the returned token must stay valid.",
                "schema": {"type": "integer", "minimum": 0, "maximum": 86400},
            },
        ],
        "responses": {
            "200": {
                **_json_response("A token valid for `expires_in` seconds.", "Token"),
            },
            "400": _error("accountId or a query parameter is invalid."),
            "401": _error("The Authorization header is missing or the key is not valid."),
            "404": _error("The account is not installed (`not_installed`)."),
            "502": _error("The token endpoint failed or rejected the stored credentials."),
            "503": _UNAVAILABLE,
            "504": _error("The token endpoint did not respond within TRACKUNIT_TIMEOUT."),
        },
    }


def _healthz_operation() -> dict[str, Any]:
    return {
        "operationId": "healthz",
        "summary": "Report that the process is up",
        "responses": {"200": _json_response("The process is up.", "Status")},
    }


def _readyz_operation() -> dict[str, Any]:
    return {
        "operationId": "readyz",
        "summary": "Report whether Vault is reachable, unsealed and accepts the service's token",
        "responses": {
            "200": _json_response("Ready to serve.", "Status"),
            "503": _json_response("Not ready. `reason` says why.", "Status"),
        },
    }


def _metrics_operation() -> dict[str, Any]:
    return {
        "operationId": "metrics",
        "summary": "Return Prometheus metrics summed over all worker processes",
        "security": [{"internalKey": []}],
        "responses": {
            "200": {
                "description": "Prometheus text exposition format 0.0.4.",
                "headers": {"X-Request-ID": {"$ref": "#/components/headers/RequestId"}},
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            "401": _error("The Authorization header is missing or the key is not valid."),
        },
    }


def _openapi_operation() -> dict[str, Any]:
    return {
        "operationId": "openapi",
        "summary": "Return this OpenAPI document",
        "security": [{"internalKey": []}],
        "responses": {
            "200": {
                "description": "The OpenAPI 3.0 document.",
                "headers": {"X-Request-ID": {"$ref": "#/components/headers/RequestId"}},
                "content": {_JSON: {"schema": {"type": "object"}}},
            },
            "401": _error("The Authorization header is missing or the key is not valid."),
        },
    }


def _schemas() -> dict[str, Any]:
    return {
        "InstallEvent": {
            "type": "object",
            "required": ["type", "accountId"],
            "description": "clientId and clientSecret are required when type is INSTALLED.",
            "properties": {
                "type": {"type": "string", "example": "INSTALLED"},
                "accountId": {"type": "string", "format": "uuid", "example": _ACCOUNT_ID_EXAMPLE},
                "clientId": {"type": "string", "maxLength": 256},
                "clientSecret": {"type": "string", "maxLength": 1024, "writeOnly": True},
                "irisAppId": {"type": "string", "maxLength": 256},
            },
        },
        "InstallResult": {
            "type": "object",
            "required": ["status", "accountId"],
            "properties": {
                "status": {"type": "string", "enum": ["installed", "uninstalled", "not_installed"]},
                "accountId": {"type": "string", "format": "uuid"},
                "version": {"type": "integer", "minimum": 1, "description": "The KV version written or deleted."},
            },
        },
        "IgnoredEvent": {
            "type": "object",
            "required": ["status", "type", "accountId"],
            "properties": {
                "status": {"type": "string", "enum": ["ignored"]},
                "type": {"type": "string"},
                "accountId": {"type": "string", "format": "uuid"},
            },
        },
        "Token": {
            "type": "object",
            "required": ["access_token", "token_type", "expires_in", "scope"],
            "properties": {
                "access_token": {"type": "string", "minLength": 1},
                "token_type": {"type": "string", "enum": ["Bearer"]},
                "expires_in": {"type": "integer", "minimum": 0},
                "scope": {"type": "string"},
            },
        },
        "Status": {
            "type": "object",
            "required": ["status"],
            "properties": {
                "status": {"type": "string", "enum": ["ok", "ready", "unavailable"]},
                "reason": {"type": "string"},
            },
        },
        "Error": {
            "type": "object",
            "required": ["error", "message"],
            "description": "Some errors add fields such as `field`, `accountId` or `oauth_error`.",
            "properties": {
                "error": {"type": "string", "example": "invalid_request"},
                "message": {"type": "string"},
                "field": {"type": "string"},
            },
        },
    }
