"""The model catalog: the upstream's list, cached per worker, with a built-in fallback."""

import logging
import time

from gevent.lock import BoundedSemaphore

from ..upstream.client import UpstreamUnavailable

log = logging.getLogger(__name__)

# Served when the upstream catalog cannot be fetched (no account yet, upstream down).
FALLBACK_MODELS = (
    "gpt-6.1-sol", "gpt-5.5", "gpt-5.2", "gpt-5.2-codex", "gpt-5.1", "gpt-5.1-codex", "gpt-5.1-codex-max",
    "gpt-5.1-codex-mini",
    "gpt-5", "gpt-5-codex", "gpt-5-codex-mini",
)
# A failed fetch is retried sooner than a good catalog expires.
RETRY_AFTER_FAILURE = 30.0
CLIENT_VERSION = "0.169.0"


class Catalog:
    def __init__(self, client, pool, cache_seconds):
        self._client = client
        self._pool = pool
        self._cache_seconds = cache_seconds
        self._slugs = None
        self._authoritative = False
        self._expires = 0.0
        self._lock = BoundedSemaphore()

    def slugs(self):
        """The model slugs, refreshed at most once at a time per worker."""
        if self._slugs is not None and time.monotonic() < self._expires:
            return self._slugs
        if self._slugs is not None and self._lock.locked():
            return self._slugs  # someone is refreshing: the stale list serves meanwhile
        with self._lock:
            if self._slugs is None or time.monotonic() >= self._expires:
                self._refresh()
        return self._slugs

    def _refresh(self):
        slugs = None
        account = self._pool.first_usable()
        if account is not None:
            try:
                slugs = parse_models(self._client.get_models(account.credentials, CLIENT_VERSION))
            except UpstreamUnavailable as exc:
                log.warning("model catalog unavailable, serving the built-in list: %s", exc)
        if slugs:
            self._slugs, ttl = tuple(slugs), self._cache_seconds
        else:
            self._slugs, ttl = FALLBACK_MODELS, min(self._cache_seconds, RETRY_AFTER_FAILURE)
        self._authoritative = bool(slugs)
        self._expires = time.monotonic() + ttl

    def knows(self, model):
        """Whether ``model`` may be requested: it is in the upstream's catalog. When only the
        built-in list is at hand (no account yet, upstream unreachable) that list is a guess,
        and the upstream itself judges the model."""
        return model in self.slugs() or not self._authoritative

    def listed(self, model):
        """Whether ``model`` is in the catalog as last fetched (the built-in list until then).
        Never fetches: it labels metrics at the end of a request."""
        return model in (self._slugs or FALLBACK_MODELS)

    def listing(self, allowed_models=None):
        """The OpenAI list shape, filtered by a key's allowed models."""
        data = [{"id": slug, "object": "model", "created": 0, "owned_by": "openai"}
                for slug in self.slugs() if allowed_models is None or slug in allowed_models]
        return {"object": "list", "data": data}


def parse_models(document):
    """Slugs from the Codex catalog (``{"models": [{"slug"}]}``) or an OpenAI-style list."""
    if not isinstance(document, dict):
        return []
    entries = document.get("models")
    if not isinstance(entries, list):
        entries = document.get("data") if isinstance(document.get("data"), list) else []
    slugs = []
    for entry in entries:
        if isinstance(entry, str):
            slugs.append(entry)
        elif isinstance(entry, dict):
            slug = entry.get("slug") or entry.get("id")
            if isinstance(slug, str) and slug:
                slugs.append(slug)
    return slugs
