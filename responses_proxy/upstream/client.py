"""The HTTP client of the Codex backend: one ``requests.Session`` per worker process."""

import os
import time
from http import HTTPStatus

import orjson
import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.cookies import RequestsCookieJar, extract_cookies_to_jar, get_cookie_header, merge_cookies
from requests.structures import CaseInsensitiveDict
from requests.utils import get_environ_proxies, select_proxy
from urllib3.exceptions import ClosedPoolError

from ..errors import ApiError, InvalidRequest, UpstreamError, UsageLimitReached

USER_AGENT = "responses-proxy/1.0"
ERROR_BODY_LIMIT = 64 * 1024


# Client headers the Codex backend reads (feature flags, turn metadata): passed on as sent.
FORWARDED_HEADER_PREFIXES = ("x-codex-", "x-openai-internal-codex-")
# Issued by an upstream account at the start of a turn and echoed by Codex for the rest of it:
# only ever sent back to the account that issued it (see responses.threads).
TURN_STATE = "x-codex-turn-state"


def upstream_headers(client_headers, prompt_cache_key=None):
    """The per-request headers for the upstream: the Codex client's own (but its turn state),
    and ``session_id`` (the backend routes a session's requests to the same prompt cache by it)."""
    headers = {name: value for name, value in client_headers.items()
               if name.lower().startswith(FORWARDED_HEADER_PREFIXES) and name.lower() != TURN_STATE}
    if prompt_cache_key:
        headers["session_id"] = prompt_cache_key
    return headers


class UpstreamUnavailable(Exception):
    """Connecting to the upstream failed or timed out (nothing was received)."""


class UpstreamClient:
    def __init__(self, config):
        self.base_url = config["UPSTREAM_BASE_URL"]
        self.responses_url = self.base_url + "/codex/responses"
        self.models_url = self.base_url + "/codex/models"
        self.timeout = (config["UPSTREAM_CONNECT_TIMEOUT"], config["UPSTREAM_READ_TIMEOUT"])
        self.originator = config["ORIGINATOR"]
        self.pool_size = config.get("UPSTREAM_POOL_SIZE", 1000)
        self._session = None
        self._pid = None
        self._responses_pool = None
        self._direct = False  # whether the responses URL is reached without a proxy

    @property
    def session(self):
        # A session made before a fork would share its sockets with the parent.
        if self._pid != os.getpid():
            self._session = self._new_session()
            self._responses_pool = None
            self._direct = select_proxy(self.responses_url, self._session.proxies) is None
            self._pid = os.getpid()
        return self._session

    def _new_session(self):
        session = requests.Session()
        # Proxy settings are read from the environment once, not on every request.
        session.proxies = get_environ_proxies(self.base_url)
        session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        session.trust_env = False
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=self.pool_size)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        session.headers.clear()
        session.headers["User-Agent"] = USER_AGENT
        return session

    def headers(self, credentials):
        return {
            "Authorization": "Bearer " + credentials["access_token"],
            "chatgpt-account-id": credentials["chatgpt_account_id"],
            "originator": self.originator,
        }

    def open_responses(self, credentials, body: bytes, extra_headers=None):
        """POST the body; returns the streaming ``requests.Response`` whatever its status."""
        headers = self.headers(credentials)
        if extra_headers:
            headers.update(extra_headers)
        headers["Content-Type"] = "application/json"
        headers["Accept"] = "text/event-stream"
        headers["Accept-Encoding"] = "identity"
        try:
            session = self.session  # (made first: it decides ``_direct``)
            if self._direct:
                return self._post_direct(session, self.responses_url, headers, body)
            return self._post(self.responses_url, headers, body)
        except requests.RequestException as exc:
            raise UpstreamUnavailable(describe_exception(exc)) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise UpstreamUnavailable(describe_urllib3_exception(exc)) from None

    def _post_direct(self, session, url, headers, body):
        """What ``_post`` does, straight through the session's urllib3 pool for ``url`` (the
        path of every request: about a third less CPU per request than through ``requests``).
        Without a proxy only; cookies the upstream sets are kept and sent back, as the session
        does; a redirect is not followed (the Codex backend answers this route directly)."""
        headers = {**session.headers, **headers, "Content-Length": str(len(body))}
        if session.cookies:
            cookie = get_cookie_header(session.cookies, _cookie_request(url, headers))
            if cookie:
                headers["Cookie"] = cookie
        try:
            raw = self._pool(url).urlopen("POST", self._responses_path, body=body, headers=headers,
                                          **self._urlopen_options)
        except ClosedPoolError:  # the session's pool manager let it go: take the new one
            self._responses_pool = None
            raw = self._pool(url).urlopen("POST", self._responses_path, body=body, headers=headers,
                                          **self._urlopen_options)
        response = requests.Response()
        response.status_code = raw.status
        response.headers = CaseInsensitiveDict(raw.headers)
        response.raw = raw
        response.reason = raw.reason
        response.url = url
        if "set-cookie" in response.headers:
            extract_cookies_to_jar(session.cookies, _cookie_request(url, headers), raw)
        return response

    def _pool(self, url):
        """urllib3's connection pool for ``url`` as ``requests`` would pick it (TLS settings
        included), looked up once per process."""
        if self._responses_pool is None:
            session = self.session
            request = requests.PreparedRequest()
            request.prepare(method="POST", url=url)
            adapter = session.get_adapter(url)
            self._responses_pool = adapter.get_connection_with_tls_context(request, session.verify, session.proxies,
                                                                           session.cert)
            self._responses_path = request.path_url
            # As HTTPAdapter.send: no retries by urllib3 (the pool's failover decides), the
            # body left unread for the relay.
            self._urlopen_options = {
                "redirect": False, "assert_same_host": False, "preload_content": False, "decode_content": False,
                "retries": adapter.max_retries,
                "timeout": urllib3.Timeout(connect=self.timeout[0], read=self.timeout[1])}
        return self._responses_pool

    def _post(self, url, headers, body):
        """``session.post(url, data=body, headers=headers, stream=True, timeout=self.timeout)``,
        without what ``Session.request`` redoes on every call for nothing here: merging the
        environment (read into the session once), params, auth and hooks (there are none).
        Cookies and redirects are handled as ``Session.send`` handles them."""
        session = self.session
        merged = CaseInsensitiveDict(session.headers)
        merged.update(headers)
        request = requests.PreparedRequest()
        request.prepare(method="POST", url=url, headers=merged, data=body,
                        cookies=merge_cookies(RequestsCookieJar(), session.cookies))
        send = {"stream": True, "timeout": self.timeout, "verify": session.verify, "proxies": session.proxies,
                "cert": session.cert}
        response = session.get_adapter(url).send(request, **send)
        if "set-cookie" in response.headers:  # what extract_cookies_to_jar looks for, checked cheaply
            extract_cookies_to_jar(session.cookies, request, response.raw)
        if response.is_redirect:
            history = [response, *session.resolve_redirects(response, request, **send)]
            response = history.pop()
            response.history = history
        return response

    def get_quota(self, credentials):
        """The account's plan windows from {base}/wham/usage."""
        headers = self.headers(credentials)
        headers["Accept"] = "application/json"
        try:
            response = self.session.get(self.base_url + "/wham/usage", headers=headers,
                                        timeout=(self.timeout[0], 15))
            response.raise_for_status()
            return response.json()
        except (requests.RequestException, ValueError) as exc:
            raise UpstreamUnavailable(describe_exception(exc)) from None

    def get_models(self, credentials, client_version):
        headers = self.headers(credentials)
        headers["Accept"] = "application/json"
        try:
            response = self.session.get(self.models_url, params={"client_version": client_version},
                                        headers=headers, timeout=(self.timeout[0], 15))
            response.raise_for_status()
            return response.json()
        except (requests.RequestException, ValueError) as exc:
            raise UpstreamUnavailable(describe_exception(exc)) from None


def describe_exception(exc):
    if isinstance(exc, requests.Timeout):
        return "the upstream did not answer in time"
    if isinstance(exc, requests.ConnectionError):
        return "could not connect to the upstream"
    return f"upstream request failed ({type(exc).__name__})"


def describe_urllib3_exception(exc):
    """``describe_exception`` for what urllib3 raises (its ``MaxRetryError`` wraps the cause)."""
    reason = getattr(exc, "reason", None) or exc
    # A refused connection is a NewConnectionError, which urllib3 derives from its timeout error.
    if isinstance(reason, urllib3.exceptions.NewConnectionError):
        return "could not connect to the upstream"
    if isinstance(reason, (urllib3.exceptions.TimeoutError, TimeoutError)):
        return "the upstream did not answer in time"
    if isinstance(reason, (urllib3.exceptions.SSLError, urllib3.exceptions.ProtocolError, OSError)):
        return "could not connect to the upstream"
    return f"upstream request failed ({type(reason).__name__})"


def _cookie_request(url, headers):
    """The request as the cookie jar reads it (its URL and headers)."""
    request = requests.PreparedRequest()
    request.url = url
    request.headers = CaseInsensitiveDict(headers)
    return request


def read_error_body(response):
    """The (bounded) body of an upstream error response, then the connection is released."""
    try:
        data = b""
        for chunk in response.iter_content(chunk_size=8192):
            data += chunk
            if len(data) >= ERROR_BODY_LIMIT:
                break
        return data
    except requests.RequestException:
        return b""
    finally:
        response.close()


# An upstream message longer than this is cut: it is quoted inside the client's error.
MESSAGE_LIMIT = 500
# A body that is not JSON is quoted only as a short line of plain text.
PLAIN_TEXT_LIMIT = 200


def upstream_error_fields(raw):
    """(message, error dict) from an upstream error body of any known shape.

    A JSON error's message is quoted; so is a short line of plain text. Anything else (a
    proxy's HTML page, a stack trace) says nothing useful to the client and is never passed on.
    """
    try:
        document = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        document = None
    error = {}
    if isinstance(document, dict):
        if isinstance(document.get("error"), dict):
            error = document["error"]
        elif isinstance(document.get("detail"), str):
            error = {"message": document["detail"]}
        elif isinstance(document.get("detail"), dict):
            error = document["detail"]
    message = error.get("message") if isinstance(error.get("message"), str) else None
    if message is None and raw and document is None:
        text = raw[:PLAIN_TEXT_LIMIT + 1].decode("utf-8", "replace").strip()
        if len(text) <= PLAIN_TEXT_LIMIT and "\n" not in text and "<" not in text and text.isprintable():
            message = text
    if message is not None:
        message = " ".join(message.split())[:MESSAGE_LIMIT] or None
    return message, error


def status_text(status):
    """``HTTP 502 Bad Gateway``: the status and its standard reason."""
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def error_for_status(status, raw, default_cooldown):
    """The ``ApiError`` a client gets for an upstream error status received before any byte.

    401/403: our credentials, not the client's, were refused: 502. 429: the usage-limit error,
    passed on so the Codex CLI can say when to come back. 5xx: 502. Any other 4xx: the upstream
    refused the request itself: same status, upstream's message.
    """
    message, error = upstream_error_fields(raw)
    if status == 429:
        resets_at, resets_in = usage_limit_reset(error, default_cooldown)
        return UsageLimitReached(message or "The usage limit has been reached.", resets_at=resets_at,
                                 resets_in_seconds=resets_in, plan_type=error.get("plan_type"))
    if status in (401, 403):
        return UpstreamError(f"The upstream refused the account's credentials ({status_text(status)}).")
    if status >= 500 or status < 400:
        detail = f": {message}" if message else "."
        return UpstreamError(f"The upstream failed ({status_text(status)}){detail}")
    code = error.get("code") if isinstance(error.get("code"), str) else "upstream_rejected"
    param = error.get("param") if isinstance(error.get("param"), str) else None
    return ApiError(message or f"The upstream rejected the request ({status_text(status)}).",
                    status=status, code=code, param=param,
                    type=error.get("type") if isinstance(error.get("type"), str) else InvalidRequest.type)


def usage_limit_reset(error, default_cooldown, now=None):
    """(resets_at, resets_in_seconds) of a usage-limit error; the default cooldown when absent."""
    now = time.time() if now is None else now
    resets_at = error.get("resets_at")
    resets_in = error.get("resets_in_seconds")
    if isinstance(resets_at, (int, float)) and not isinstance(resets_at, bool) and resets_at > now:
        return float(resets_at), resets_at - now
    if isinstance(resets_in, (int, float)) and not isinstance(resets_in, bool) and resets_in > 0:
        return now + resets_in, float(resets_in)
    return now + default_cooldown, float(default_cooldown)
