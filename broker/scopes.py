"""The configured scopes and the `scope` parameter of `GET /token/<accountId>`.

TRACKUNIT_SCOPES lists the scopes every installation grants, TRACKUNIT_OPTIONAL_SCOPES
the ones marked `optional: true` in the app manifest, which a customer may deny. A
request names a subset of both, or nothing for "every configured scope the account
granted". Scope sets travel through the service as sorted tuples without duplicates,
so 'b a  a' and 'a b' name the same cache entry.
"""

from __future__ import annotations

import threading

from .errors import InvalidRequest

# Maximum length of an unknown scope quoted in an error message. Longer names are cut.
_MAX_ECHOED_LENGTH = 64
# Distinct raw `scope` strings whose canonical form is remembered.
_MAX_REMEMBERED_FORMS = 1024

ScopeSet = tuple[str, ...]


class ScopePolicy:
    """The required and optional scopes of the app, and parsing of requested scope sets.

    Thread-safe: the only shared state is a bounded dict of parsed strings, written
    under a lock and read without one.
    """

    def __init__(self, required: ScopeSet, optional: ScopeSet = ()):
        overlap = set(required) & set(optional)
        if overlap:
            raise ValueError(f"scopes are both required and optional: {sorted(overlap)}")
        self.required: ScopeSet = tuple(sorted(set(required)))
        self.optional: ScopeSet = tuple(sorted(set(optional)))
        self.all: ScopeSet = tuple(sorted(set(required) | set(optional)))
        self._optional_set = frozenset(self.optional)
        self._known = frozenset(self.all)
        self._parsed: dict[str, ScopeSet] = {}
        self._parsed_lock = threading.Lock()

    def parse_request(self, raw: str | None) -> ScopeSet | None:
        """Turn the `scope` query value into a canonical scope set, or None when it is absent.

        Scopes are separated by any run of whitespace, in any order, and may repeat.
        Raises InvalidRequest naming the field when the value is empty or names a scope
        outside TRACKUNIT_SCOPES and TRACKUNIT_OPTIONAL_SCOPES.
        """
        if raw is None:
            return None
        known = self._parsed.get(raw)
        if known is not None:
            return known

        names = raw.split()
        if not names:
            raise InvalidRequest(
                "scope is empty: name one or more configured scopes separated by spaces, "
                "or leave scope out to get every scope the account granted",
                field="scope",
            )
        unknown = sorted(set(names) - self._known)
        if unknown:
            shown = " ".join(repr(name[:_MAX_ECHOED_LENGTH]) for name in unknown[:5])
            raise InvalidRequest(
                f"scope names {shown}, which this service is not configured for; "
                f"ask only for {' '.join(self.all)}",
                field="scope",
            )

        canonical = tuple(sorted(set(names)))
        with self._parsed_lock:
            if len(self._parsed) < _MAX_REMEMBERED_FORMS:
                self._parsed[raw] = canonical
        return canonical

    def optional_in(self, scopes: ScopeSet) -> ScopeSet:
        """Return the optional scopes within `scopes`, in order."""
        return tuple(scope for scope in scopes if scope in self._optional_set)

    def granted_set(self, refused: frozenset[str]) -> ScopeSet:
        """Return every configured scope except the refused ones: what a bare request gets."""
        if not refused:
            return self.all
        return tuple(scope for scope in self.all if scope not in refused)
