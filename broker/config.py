"""Settings read once from environment variables at start-up.

Every setting is an UPPERCASE environment variable. A missing or malformed value raises
ConfigError naming the variable and the accepted form, so the process stops before it
serves anything. The README lists every variable with its default.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import urlsplit

DEFAULT_TOKEN_URL = "https://auth.trackunit.com/apptoken"
DEFAULT_K8S_TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"
# Trackunit publishes the keys that sign the Trackunit-Identity header of callbacks here.
DEFAULT_JWKS_URL = "https://iris.trackunit.com/api/marketplace/jwks"

# Trackunit scopes look like "asset.view" or "account.asset.manage".
_SCOPE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_PATH_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_MIN_API_KEY_LENGTH = 16


class ConfigError(ValueError):
    """A setting is missing or malformed. The message names the variable."""


@dataclass(frozen=True)
class Settings:
    """The service's validated configuration. Build it with load_settings()."""

    vault_addr: str
    internal_api_keys: tuple[bytes, ...] = field(repr=False)
    trackunit_scopes: tuple[str, ...]
    vault_token: str | None = field(default=None, repr=False)
    vault_auth_method: str = "token"
    vault_k8s_role: str | None = None
    vault_k8s_auth_mount: str = "kubernetes"
    vault_k8s_token_path: str = DEFAULT_K8S_TOKEN_PATH
    vault_namespace: str | None = None
    vault_cacert: str | None = None
    vault_timeout: float = 5.0
    vault_kv_mount: str = "secret"
    vault_kv_prefix: str = "iris-token-broker/accounts"
    trackunit_token_url: str = DEFAULT_TOKEN_URL
    trackunit_timeout: float = 10.0
    trackunit_max_retries: int = 2
    trackunit_max_retry_after: float = 5.0
    iris_app_id: str | None = None
    appinstall_path: str = "/appinstall"
    install_max_body_bytes: int = 16384
    token_expiry_margin: int = 60
    token_default_lifetime: int = 300
    token_max_lifetime: int = 86400
    token_cache_size: int = 100_000
    trackunit_optional_scopes: tuple[str, ...] = ()
    token_refresh_ahead_fraction: float = 0.1
    token_refresh_retry_seconds: float = 5.0
    token_refresh_workers: int = 4
    token_coherence_seconds: float = 30.0
    token_invalid_client_backoff: float = 60.0
    log_level: str = "INFO"
    log_format: str = "text"
    require_trackunit_identity: bool = True
    trackunit_jwks_url: str = DEFAULT_JWKS_URL
    trackunit_jwks_timeout: float = 2.5
    trackunit_jwks_cache_ttl: int = 300
    trackunit_jwks_min_refetch_interval: int = 30
    trackunit_identity_leeway: int = 30
    trackunit_identity_issuer: str | None = None
    trackunit_identity_audience: str | None = None


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from environment variables, raising ConfigError on the first bad one."""
    env = _Env(os.environ if environ is None else environ)

    auth_method = env.choice("VAULT_AUTH_METHOD", ("token", "kubernetes"), "token")
    vault_token = env.text("VAULT_TOKEN") if auth_method == "token" else None
    if auth_method == "token" and not vault_token:
        raise ConfigError(
            "VAULT_TOKEN is missing: set it to a Vault token that may use the service's KV "
            "prefix, or set VAULT_AUTH_METHOD=kubernetes"
        )
    k8s_role = env.text("VAULT_K8S_ROLE")
    if auth_method == "kubernetes" and not k8s_role:
        raise ConfigError(
            "VAULT_K8S_ROLE is missing: set it to the Vault Kubernetes auth role of this service "
            "when VAULT_AUTH_METHOD=kubernetes"
        )

    margin = env.integer("TOKEN_EXPIRY_MARGIN", 60, minimum=0, maximum=3600)
    default_lifetime = env.integer("TOKEN_DEFAULT_LIFETIME", 300, minimum=1, maximum=86400)
    if default_lifetime <= margin:
        raise ConfigError(
            f"TOKEN_DEFAULT_LIFETIME={default_lifetime} must be greater than "
            f"TOKEN_EXPIRY_MARGIN={margin}, or a token without expires_in could never be served"
        )

    required_scopes = _scopes(env)
    optional_scopes = _optional_scopes(env, required_scopes)

    return Settings(
        vault_addr=env.url("VAULT_ADDR", required=True),
        internal_api_keys=_api_keys(env),
        trackunit_scopes=required_scopes,
        vault_token=vault_token,
        vault_auth_method=auth_method,
        vault_k8s_role=k8s_role,
        vault_k8s_auth_mount=env.path_segments("VAULT_K8S_AUTH_MOUNT", "kubernetes"),
        vault_k8s_token_path=env.text("VAULT_K8S_TOKEN_PATH") or DEFAULT_K8S_TOKEN_PATH,
        vault_namespace=env.text("VAULT_NAMESPACE"),
        vault_cacert=env.text("VAULT_CACERT"),
        vault_timeout=env.number("VAULT_TIMEOUT", 5.0, minimum=0.1, maximum=120),
        vault_kv_mount=env.path_segments("VAULT_KV_MOUNT", "secret"),
        vault_kv_prefix=env.path_segments("VAULT_KV_PREFIX", "iris-token-broker/accounts"),
        trackunit_token_url=env.url("TRACKUNIT_TOKEN_URL", default=DEFAULT_TOKEN_URL),
        trackunit_timeout=env.number("TRACKUNIT_TIMEOUT", 10.0, minimum=0.1, maximum=120),
        trackunit_max_retries=env.integer("TRACKUNIT_MAX_RETRIES", 2, minimum=0, maximum=10),
        trackunit_max_retry_after=env.number(
            "TRACKUNIT_MAX_RETRY_AFTER", 5.0, minimum=0, maximum=60
        ),
        iris_app_id=env.text("IRIS_APP_ID"),
        appinstall_path=_route_path(env),
        install_max_body_bytes=env.integer(
            "INSTALL_MAX_BODY_BYTES", 16384, minimum=1024, maximum=1_048_576
        ),
        token_expiry_margin=margin,
        token_default_lifetime=default_lifetime,
        token_max_lifetime=env.integer("TOKEN_MAX_LIFETIME", 86400, minimum=60, maximum=604800),
        token_cache_size=env.integer("TOKEN_CACHE_SIZE", 100_000, minimum=1, maximum=10_000_000),
        trackunit_optional_scopes=optional_scopes,
        token_refresh_ahead_fraction=env.number(
            "TOKEN_REFRESH_AHEAD_FRACTION", 0.1, minimum=0.0, maximum=0.9
        ),
        token_refresh_retry_seconds=env.number(
            "TOKEN_REFRESH_RETRY_SECONDS", 5.0, minimum=0.1, maximum=600
        ),
        token_refresh_workers=env.integer("TOKEN_REFRESH_WORKERS", 4, minimum=1, maximum=64),
        token_coherence_seconds=env.number(
            "TOKEN_COHERENCE_SECONDS", 30.0, minimum=0.5, maximum=3600
        ),
        token_invalid_client_backoff=env.number(
            "TOKEN_INVALID_CLIENT_BACKOFF", 60.0, minimum=0.0, maximum=3600
        ),
        log_level=env.choice("LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR"), "INFO"),
        log_format=env.choice("LOG_FORMAT", ("text", "json"), "text"),
        require_trackunit_identity=env.boolean("REQUIRE_TRACKUNIT_IDENTITY", True),
        trackunit_jwks_url=env.url("TRACKUNIT_JWKS_URL", default=DEFAULT_JWKS_URL),
        trackunit_jwks_timeout=env.number("TRACKUNIT_JWKS_TIMEOUT", 2.5, minimum=0.1, maximum=10),
        trackunit_jwks_cache_ttl=env.integer(
            "TRACKUNIT_JWKS_CACHE_TTL", 300, minimum=10, maximum=86400
        ),
        trackunit_jwks_min_refetch_interval=env.integer(
            "TRACKUNIT_JWKS_MIN_REFETCH_INTERVAL", 30, minimum=1, maximum=3600
        ),
        trackunit_identity_leeway=env.integer(
            "TRACKUNIT_IDENTITY_LEEWAY", 30, minimum=0, maximum=300
        ),
        trackunit_identity_issuer=env.text("TRACKUNIT_IDENTITY_ISSUER"),
        trackunit_identity_audience=env.text("TRACKUNIT_IDENTITY_AUDIENCE"),
    )


def _api_keys(env: _Env) -> tuple[bytes, ...]:
    raw = env.text("INTERNAL_API_KEYS")
    if not raw:
        raise ConfigError(
            "INTERNAL_API_KEYS is missing: set it to one or more comma-separated keys of at "
            f"least {_MIN_API_KEY_LENGTH} characters that internal callers send as "
            "'Authorization: Bearer <key>'"
        )

    keys = [key.strip() for key in raw.split(",") if key.strip()]
    for position, key in enumerate(keys, start=1):
        if len(key) < _MIN_API_KEY_LENGTH or any(ch.isspace() for ch in key):
            # The key itself stays out of the message: it is a secret.
            raise ConfigError(
                f"INTERNAL_API_KEYS entry {position} is invalid: each key needs at least "
                f"{_MIN_API_KEY_LENGTH} characters and no spaces, for example the output of "
                "'python3 -c \"import secrets; print(secrets.token_urlsafe(32))\"'"
            )
    return tuple(key.encode() for key in keys)


def _scopes(env: _Env) -> tuple[str, ...]:
    raw = env.text("TRACKUNIT_SCOPES")
    if not raw:
        raise ConfigError(
            "TRACKUNIT_SCOPES is missing: set it to the space-separated required scopes of "
            "the app manifest, for example 'asset.view account.asset.manage'"
        )
    return _scope_list("TRACKUNIT_SCOPES", raw)


def _optional_scopes(env: _Env, required: tuple[str, ...]) -> tuple[str, ...]:
    """Read TRACKUNIT_OPTIONAL_SCOPES, the manifest's `optional: true` scopes (may be empty)."""
    raw = env.text("TRACKUNIT_OPTIONAL_SCOPES")
    if not raw:
        return ()

    scopes = _scope_list("TRACKUNIT_OPTIONAL_SCOPES", raw)
    both = sorted(set(scopes) & set(required))
    if both:
        raise ConfigError(
            f"TRACKUNIT_OPTIONAL_SCOPES repeats {' '.join(both)} from TRACKUNIT_SCOPES: list "
            "each scope once, in TRACKUNIT_SCOPES if required or here if optional"
        )
    return scopes


def _scope_list(name: str, raw: str) -> tuple[str, ...]:
    """Split a scope list on spaces or commas into a sorted tuple without duplicates."""
    scopes = sorted(set(raw.replace(",", " ").split()))
    for scope in scopes:
        if not _SCOPE_RE.match(scope):
            raise ConfigError(
                f"{name} contains an invalid scope {scope!r}: use letters, digits "
                "and '._:-', separated by spaces"
            )
    return tuple(scopes)


def _route_path(env: _Env) -> str:
    path = env.text("APPINSTALL_PATH") or "/appinstall"
    segments = path.strip("/").split("/")
    if not path.startswith("/") or not all(_PATH_SEGMENT_RE.match(s) for s in segments):
        raise ConfigError(
            f"APPINSTALL_PATH={path!r} is invalid: use an absolute URL path such as "
            "'/appinstall' or '/trackunit/callback'"
        )
    return "/" + "/".join(segments)


class _Env:
    """Typed reads of environment variables, each failure naming the variable."""

    def __init__(self, environ: Mapping[str, str]):
        self._environ = environ

    def text(self, name: str) -> str | None:
        value = self._environ.get(name, "").strip()
        return value or None

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.text(name) or default
        if value not in choices:
            raise ConfigError(f"{name}={value!r} is invalid: use one of {', '.join(choices)}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.text(name)
        if raw is None:
            return default
        if raw.lower() in ("true", "1"):
            return True
        if raw.lower() in ("false", "0"):
            return False
        raise ConfigError(f"{name}={raw!r} is invalid: use true, false, 1 or 0")

    def integer(self, name: str, default: int, *, minimum: int, maximum: int) -> int:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value is None or not minimum <= value <= maximum:
            raise ConfigError(
                f"{name}={raw!r} is invalid: use a whole number from {minimum} to {maximum}"
            )
        return value

    def number(self, name: str, default: float, *, minimum: float, maximum: float) -> float:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = None
        if value is None or not minimum <= value <= maximum:
            raise ConfigError(f"{name}={raw!r} is invalid: use a number from {minimum} to {maximum}")
        return value

    def url(self, name: str, *, default: str | None = None, required: bool = False) -> str:
        raw = self.text(name)
        if raw is None and required:
            raise ConfigError(f"{name} is missing: set it to a URL such as http://127.0.0.1:8200")
        value = raw or default
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"{name}={value!r} is invalid: use an http:// or https:// URL with a host"
            )
        return value.rstrip("/")

    def path_segments(self, name: str, default: str) -> str:
        value = (self.text(name) or default).strip("/")
        segments = value.split("/")
        if not all(_PATH_SEGMENT_RE.match(s) and s not in (".", "..") for s in segments):
            raise ConfigError(
                f"{name}={value!r} is invalid: use path segments of letters, digits and '_.-' "
                "separated by '/', for example 'iris-token-broker/accounts'"
            )
        return value
