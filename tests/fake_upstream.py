"""A fake Codex backend: a real HTTP server on 127.0.0.1, scripted per test.

It answers ``POST /codex/responses`` with SSE event streams built like the real backend's,
``GET /codex/models`` with a catalog, ``POST /oauth/token`` (refresh) and ``GET /wham/usage``.
Each request takes the next behaviour scripted for its input (``push(..., account=("input",
text))``: the text of the last input message, which marks one request whichever account it
reaches), else for its account (``chatgpt-account-id``), else the next one scripted for any
account, else the default (a short text answer; for an input ending with ``compaction_trigger``,
one compaction item). Every request is recorded, and so is every stream the client closed
before it ended.

What the backend binds to the account that served it is bound here too. Encrypted content
(reasoning's ``encrypted_content``, compaction items) written as ``ISSUED`` in a script is
issued to the serving account as an opaque token that only that account's secret verifies;
an input item carrying a token of another account is refused (400 ``invalid_encrypted_content``),
and with ``store: false`` an item that names an id without its content is not found (404).
Turn states (``x-codex-turn-state``) are issued the same way, and one the account did not issue
is refused (400). Content the fake never issued (the captured fixtures' ``gAAAAB-opaque``)
passes, as it always did.
"""

import base64
import collections
import hashlib
import hmac
import itertools
import json
import secrets
import select
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODELS = ["gpt-5.2", "gpt-5.2-codex", "gpt-5.1-codex", "gpt-5.1-codex-mini", "gpt-4.1"]

_ids = itertools.count(1)


def new_id(prefix):
    return f"{prefix}_{next(_ids):06d}"


def response_object(response_id, model, status="in_progress", output=None, usage=None, **extra):
    return {"id": response_id, "object": "response", "created_at": int(time.time()), "status": status,
            "model": model, "output": output or [], "usage": usage, "error": None, "incomplete_details": None,
            **extra}


USAGE = {"input_tokens": 12, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 7,
         "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 19}
# Encrypted content a script leaves to the fake: issued, when served, to the serving account.
ISSUED = "<issued to the serving account>"
OPAQUE = "gAAAAB-opaque"  # content no account issued: accepted anywhere
TURN_STATE = "x-codex-turn-state"
# Items whose content the backend encrypts for the account that produced them.
ENCRYPTED_TYPES = ("reasoning", "compaction")


class Script:
    """Builds the event list of one answer; ``events()`` returns ``[(name, payload), ...]``."""

    def __init__(self, model="gpt-5.2"):
        self.model = model
        self.response_id = new_id("resp")
        self.items = []
        self._events = []

    def _add(self, name, **payload):
        self._events.append((name, {"type": name, **payload}))

    def start(self):
        self._add("response.created", response=response_object(self.response_id, self.model))
        self._add("response.in_progress", response=response_object(self.response_id, self.model))
        return self

    def reasoning(self, summary="Thinking it over.", encrypted_content=OPAQUE):
        """A reasoning item (``encrypted_content=ISSUED``: bound to the account that serves it)."""
        index = len(self.items)
        item = {"id": new_id("rs"), "type": "reasoning", "summary": [{"type": "summary_text", "text": summary}],
                "content": None, "encrypted_content": encrypted_content}
        self._add("response.output_item.added", output_index=index, item={**item, "summary": []})
        self._add("response.output_item.done", output_index=index, item=item)
        self.items.append(item)
        return self

    def message(self, deltas, kind="output_text"):
        """An assistant message streamed as ``deltas`` (``kind``: output_text or refusal)."""
        index = len(self.items)
        item_id = new_id("msg")
        text = "".join(deltas)
        part = {"type": "output_text", "text": text, "annotations": []} if kind == "output_text" else {
            "type": "refusal", "refusal": text}
        empty = {**part, **({"text": ""} if kind == "output_text" else {"refusal": ""})}
        self._add("response.output_item.added", output_index=index,
                  item={"id": item_id, "type": "message", "role": "assistant", "status": "in_progress",
                        "content": []})
        self._add("response.content_part.added", item_id=item_id, output_index=index, content_index=0, part=empty)
        for delta in deltas:
            self._add(f"response.{kind}.delta", item_id=item_id, output_index=index, content_index=0, delta=delta)
        if kind == "output_text":
            self._add("response.output_text.done", item_id=item_id, output_index=index, content_index=0, text=text)
        else:
            self._add("response.refusal.done", item_id=item_id, output_index=index, content_index=0, refusal=text)
        self._add("response.content_part.done", item_id=item_id, output_index=index, content_index=0, part=part)
        item = {"id": item_id, "type": "message", "role": "assistant", "status": "completed", "content": [part]}
        self._add("response.output_item.done", output_index=index, item=item)
        self.items.append(item)
        return self

    def function_call(self, name, argument_chunks, call_id=None):
        index = len(self.items)
        item_id = new_id("fc")
        call_id = call_id or new_id("call")
        arguments = "".join(argument_chunks)
        self._add("response.output_item.added", output_index=index,
                  item={"id": item_id, "type": "function_call", "status": "in_progress", "name": name,
                        "call_id": call_id, "arguments": ""})
        for chunk in argument_chunks:
            self._add("response.function_call_arguments.delta", item_id=item_id, output_index=index, delta=chunk)
        self._add("response.function_call_arguments.done", item_id=item_id, output_index=index,
                  arguments=arguments)
        item = {"id": item_id, "type": "function_call", "status": "completed", "name": name, "call_id": call_id,
                "arguments": arguments}
        self._add("response.output_item.done", output_index=index, item=item)
        self.items.append(item)
        return self

    def compaction(self):
        """The one item of a remote compaction: done at once, its content bound to the account."""
        index = len(self.items)
        item = {"type": "compaction", "id": new_id("cmp"), "encrypted_content": ISSUED}
        self._add("response.output_item.done", output_index=index, item=item)
        self.items.append(item)
        return self

    def completed(self, empty_output=False, usage=USAGE):
        output = [] if empty_output else self.items
        self._add("response.completed",
                  response=response_object(self.response_id, self.model, "completed", output, usage))
        return self

    def incomplete(self, reason="max_output_tokens"):
        self._add("response.incomplete", response=response_object(
            self.response_id, self.model, "incomplete", self.items, USAGE,
            incomplete_details={"reason": reason}))
        return self

    def failed(self, code="server_error", message="The model failed to answer."):
        response = response_object(self.response_id, self.model, "failed", self.items, None)
        response["error"] = {"code": code, "message": message}
        self._add("response.failed", response=response)
        return self

    def events(self):
        for sequence, (_, payload) in enumerate(self._events):
            payload["sequence_number"] = sequence
        return list(self._events)


def text_answer(text="Hello from the fake upstream.", model="gpt-5.2", pieces=4):
    size = max(1, len(text) // pieces)
    deltas = [text[i:i + size] for i in range(0, len(text), size)]
    return Script(model).start().message(deltas).completed().events()


def compaction_answer(model="gpt-5.2", usage=USAGE):
    return Script(model).start().compaction().completed(usage=usage).events()


def compacting(body):
    """Whether a request asks for a remote compaction: its input ends with ``compaction_trigger``."""
    items = body.get("input") if isinstance(body, dict) else None
    return isinstance(items, list) and bool(items) and isinstance(items[-1], dict) and \
        items[-1].get("type") == "compaction_trigger"


def last_text(body):
    """The text of the last content part of a request's last input item (None if it has none)."""
    items = body.get("input") if isinstance(body, dict) else None
    last = items[-1] if isinstance(items, list) and items else None
    content = last.get("content") if isinstance(last, dict) else None
    if isinstance(content, str):
        return content
    part = content[-1] if isinstance(content, list) and content else None
    return part.get("text") if isinstance(part, dict) else None


def sse(events, with_names=True):
    out = []
    for name, payload in events:
        data = json.dumps(payload, separators=(",", ":"))
        out.append((f"event: {name}\n" if with_names else "") + f"data: {data}\n\n")
    return out


def jwt(claims):
    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.signature"


def auth_json(account_id="acct-fake-1", email="dev@example.com", plan="plus", expires_in=3600,
              refresh_token="rt-1", last_refresh="2026-11-01T00:00:00Z"):
    """A Codex CLI auth.json document for a fake account."""
    auth = {"chatgpt_account_id": account_id, "chatgpt_plan_type": plan}
    return {
        "OPENAI_API_KEY": None,
        "tokens": {
            "id_token": jwt({"email": email, "https://api.openai.com/auth": auth}),
            "access_token": jwt({"exp": int(time.time()) + expires_in, "https://api.openai.com/auth": auth,
                                 "sub": account_id, "jti": uuid.uuid4().hex}),
            "refresh_token": refresh_token,
            "account_id": account_id,
        },
        "last_refresh": last_refresh,
    }


class QuietServer(ThreadingHTTPServer):
    # Tests open dozens of upstream connections at once: the default backlog (5) drops some.
    request_queue_size = 128

    def handle_error(self, request, client_address):
        # A client closing a kept-alive connection is normal, not worth a traceback.
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


class FakeUpstream:
    """Behaviours (dicts) scripted with ``push``; see ``_serve_responses`` for their keys."""

    def __init__(self, tls_context=None):
        self.requests = []
        self.closed_early = []  # {response_id, time} of streams whose client went away
        self.raw_bodies = []  # {started, ended, sent, complete} of every ``raw`` body served
        self.models = list(MODELS)
        self.models_status = 200
        self.rejected_tokens = set()  # access tokens answered with 401 (e.g. expired upstream)
        self.used_refresh_tokens = set()  # refresh tokens rotate: a second use is invalid_grant
        self.turn_states = []  # (turn state, account) as issued
        self._master = secrets.token_bytes(32)
        self._accounts = set()  # every account that was served: ``issuer_of`` tries them
        self._scripts = collections.defaultdict(collections.deque)
        self._lock = threading.Lock()
        self._server = QuietServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        if tls_context is not None:
            self._server.socket = tls_context.wrap_socket(self._server.socket, server_side=True)
            self.base_url = f"https://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._server.shutdown()
        self._server.server_close()

    def reset(self):
        with self._lock:
            self.requests.clear()
            self.closed_early.clear()
            self.raw_bodies.clear()
            self._scripts.clear()
            self.rejected_tokens.clear()
            self.used_refresh_tokens.clear()
            self.turn_states.clear()
            self.models = list(MODELS)
            self.models_status = 200

    def push(self, behaviour, account=None):
        with self._lock:
            self._scripts[account].append(behaviour)

    def response_requests(self):
        return [request for request in self.requests if request["path"] == "/codex/responses"]

    # -- what is bound to an account -------------------------------------------------------

    def _mac(self, account, kind, nonce):
        # The account's own secret (a request without an account has one too: the empty name's).
        secret = hmac.new(self._master, (account or "").encode(), hashlib.sha256).digest()
        return hmac.new(secret, kind + nonce, hashlib.sha256).digest()[:16]

    def issue(self, account, kind=b"content", seed=None):
        """An opaque token that only ``account``'s secret verifies (``seed``: the same token for
        the same item, wherever the stream repeats it)."""
        nonce = hashlib.sha256(seed.encode()).digest()[:12] if seed else secrets.token_bytes(12)
        prefix = "gAAAAB" if kind == b"content" else "ts_"
        return prefix + base64.urlsafe_b64encode(nonce + self._mac(account, kind, nonce)).decode()

    def verifies(self, token, account, kind=b"content"):
        """None for a token the fake never issued, else whether ``account`` issued it."""
        prefix = "gAAAAB" if kind == b"content" else "ts_"
        if not isinstance(token, str) or not token.startswith(prefix):
            return None
        try:
            raw = base64.urlsafe_b64decode(token[len(prefix):])
        except ValueError:
            return None
        if len(raw) != 28:
            return None
        return hmac.compare_digest(raw[12:], self._mac(account, kind, raw[:12]))

    def issuer_of(self, token, kind=b"content"):
        """The account that issued ``token`` (None if the fake did not issue it)."""
        return next((account for account in sorted(self._accounts) if self.verifies(token, account, kind)), None)

    def bind(self, value, account):
        """``value`` (events, items) with every ``ISSUED`` content issued to ``account``."""
        if isinstance(value, (list, tuple)):
            return type(value)(self.bind(item, account) for item in value)
        if not isinstance(value, dict):
            return value
        bound = {key: self.bind(item, account) for key, item in value.items()}
        if bound.get("encrypted_content") == ISSUED:
            bound["encrypted_content"] = self.issue(account, seed=str(value.get("id")))
        return bound

    def refusal(self, body, headers, account):
        """(status, error body) for a request the real backend would refuse for what it carries
        (content or a turn state not issued to ``account``, an id without its content), else None."""
        metadata = body.get("client_metadata") if isinstance(body.get("client_metadata"), dict) else {}
        for state in (headers.get(TURN_STATE), metadata.get(TURN_STATE)):
            if state is not None and not self.verifies(state, account, b"turn"):
                return 400, {"error": {"message": "The x-codex-turn-state was not issued for this account.",
                                       "type": "invalid_request_error", "param": None,
                                       "code": "invalid_turn_state"}}
        items = body.get("input") if isinstance(body.get("input"), list) else []
        for item in items:
            if not isinstance(item, dict) or item.get("type") not in (*ENCRYPTED_TYPES, "item_reference"):
                continue
            content = item.get("encrypted_content")
            if content is None and item.get("id") is not None and body.get("store") is not True:
                return 404, {"error": {
                    "message": f"Item with id '{item['id']}' not found. Items are not persisted when `store` is "
                               "set to false. Try again with `store` set to true, or remove this item from your "
                               "input.", "type": "invalid_request_error", "param": "input", "code": None}}
            if self.verifies(content, account) is False:
                named = f"for item {item['id']}" if item.get("id") else f"{content[:4]}...{content[-4:]}"
                return 400, {"error": {
                    "message": f"The encrypted content {named} could not be verified. Reason: Encrypted content "
                               "could not be decrypted or parsed.", "type": "invalid_request_error",
                    "param": None, "code": "invalid_encrypted_content"}}
        return None

    def _next(self, account, shared=True):
        """The next behaviour scripted for ``account``, else (``shared``) for any account."""
        with self._lock:
            for key in (account, None) if shared else (account,):
                if self._scripts.get(key):
                    return self._scripts[key].popleft()
        return None

    def _handler_class(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                # Headers and the first event go out in separate writes: without this, Nagle's
                # algorithm and the peer's delayed ACK add 40 ms to every answer.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _record(self, body):
                entry = {"path": self.path.split("?")[0], "query": self.path.partition("?")[2],
                         "headers": {key.lower(): value for key, value in self.headers.items()},
                         "body": body, "time": time.time()}
                with fake._lock:
                    fake.requests.append(entry)
                return entry

            def _json(self, status, document, headers=None):
                raw = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self):
                entry = self._record(None)
                if entry["path"] == "/codex/models":
                    if fake.models_status != 200:
                        return self._json(fake.models_status, {"detail": "unavailable"})
                    return self._json(200, {"models": [{"slug": slug} for slug in fake.models]})
                if entry["path"] == "/wham/usage":
                    behaviour = fake._next(("usage", self.headers.get("chatgpt-account-id")), shared=False) or {}
                    return self._json(behaviour.get("status", 200), behaviour.get("body", {
                        "plan_type": "plus",
                        "rate_limit": {"primary_window": {"used_percent": 10, "reset_at": int(time.time()) + 3600},
                                       "secondary_window": {"used_percent": 5,
                                                            "reset_at": int(time.time()) + 86400}}}))
                self._json(404, {"detail": "Not Found"})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                path = self.path.split("?")[0]
                if path == "/oauth/token":
                    entry = self._record(raw.decode())
                    return self._serve_refresh(entry)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                self._record(body)
                if path != "/codex/responses":
                    return self._json(404, {"detail": "Not Found"})
                account = self.headers.get("chatgpt-account-id")
                token = (self.headers.get("Authorization") or "").partition(" ")[2]
                if token in fake.rejected_tokens:
                    return self._json(401, {"detail": "Could not validate your token."})
                if account is not None:
                    with fake._lock:
                        fake._accounts.add(account)
                # Checked before a behaviour is taken: the request that follows a refusal gets it.
                refused = fake.refusal(body, {key.lower(): value for key, value in self.headers.items()},
                                       account) if isinstance(body, dict) else None
                if refused is not None:
                    return self._json(*refused)
                behaviour = fake._next(("input", last_text(body)), shared=False) or fake._next(account) or {}
                self._serve_responses(body, behaviour, account)

            def _serve_refresh(self, entry):
                """Behaviour keys: ``status`` (+ ``body``, ``headers``) to refuse, ``delay`` (seconds
                before the answer), ``account_id`` of the new tokens. The refresh token rotates when
                the answer goes out: a client that left during ``delay`` has refreshed nothing."""
                behaviour = fake._next("refresh", shared=False) or {}
                try:
                    self._wait(behaviour.get("delay", 0))
                except BrokenPipeError:
                    self.close_connection = True
                    return None
                if behaviour.get("status", 200) != 200:
                    return self._json(behaviour["status"], behaviour.get("body", {"error": "invalid_grant"}),
                                      behaviour.get("headers"))
                try:
                    form = json.loads(entry["body"])
                except ValueError:
                    form = dict(pair.split("=", 1) for pair in entry["body"].split("&") if "=" in pair)
                used = form.get("refresh_token", "")
                with fake._lock:
                    reused = used in fake.used_refresh_tokens
                    fake.used_refresh_tokens.add(used)
                if reused:
                    return self._json(400, {"error": "invalid_grant",
                                            "error_description": "refresh token already used"})
                account = behaviour.get("account_id", "acct-fake-1")
                fresh = auth_json(account_id=account, refresh_token=used + "-next")
                self._json(200, {"id_token": fresh["tokens"]["id_token"],
                                 "access_token": fresh["tokens"]["access_token"],
                                 "refresh_token": fresh["tokens"]["refresh_token"]})

            def _serve_responses(self, body, behaviour, account):
                """Behaviour keys: ``status`` + ``body`` (an error before the stream; ``page``
                instead of ``body``: an HTML page), ``events``
                (default: a text answer, or a compaction after ``compaction_trigger``), ``delay``
                (seconds between events), ``stall`` (seconds to wait before the event with index
                ``stall_at``), ``cut_after`` (close the connection after that many events),
                ``header_delay`` (seconds before headers), ``names`` (False: no ``event:`` lines),
                ``crlf`` (CRLF line endings), ``raw`` (see ``_serve_raw``), ``headers`` (more
                response headers), ``turn_state`` (True: a new turn state for the account in the
                ``x-codex-turn-state`` header; "event": in a ``response.metadata`` event)."""
                time.sleep(behaviour.get("header_delay", 0))
                status = behaviour.get("status", 200)
                if status != 200 and "page" in behaviour:  # what a proxy in front answers: HTML
                    page = behaviour["page"].encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    return self.wfile.write(page)
                if status != 200:
                    return self._json(status, behaviour.get("body", {"error": {"message": "failure"}}),
                                      behaviour.get("headers"))
                if "raw" in behaviour:
                    return self._serve_raw(behaviour)
                model = body.get("model", "gpt-5.2") if isinstance(body, dict) else "gpt-5.2"
                events = behaviour.get("events") or (
                    compaction_answer(model) if compacting(body) else text_answer(model=model))
                events = fake.bind(events, account)
                headers = dict(behaviour.get("headers", {}))
                if behaviour.get("turn_state"):
                    state = fake.issue(account, b"turn")
                    with fake._lock:
                        fake.turn_states.append((state, account))
                    if behaviour["turn_state"] == "event":
                        metadata = {"type": "response.metadata", "headers": {TURN_STATE: state}}
                        events = events[:1] + [("response.metadata", metadata)] + events[1:]
                    else:
                        headers[TURN_STATE] = state
                frames = sse(events, behaviour.get("names", True))
                if behaviour.get("crlf"):
                    frames = [frame.replace("\n", "\r\n") for frame in frames]
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                response_id = events[0][1].get("response", {}).get("id") if events else None
                try:
                    for index, frame in enumerate(frames):
                        if index == behaviour.get("cut_after"):
                            self.connection.shutdown(socket.SHUT_RDWR)
                            self.close_connection = True
                            return None
                        if index == behaviour.get("stall_at"):
                            self._wait(behaviour.get("stall", 0))
                        elif index and behaviour.get("delay"):
                            self._wait(behaviour["delay"])
                        data = frame.encode()
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    with fake._lock:
                        fake.closed_early.append({"response_id": response_id, "time": time.time()})
                    self.close_connection = True

            def _serve_raw(self, behaviour):
                """A body of arbitrary bytes, as fast as the connection takes them: the frames of
                ``events`` (default none), then ``raw`` sent ``raw_repeat`` times (default 1) or,
                with ``raw_seconds``, again and again for that long; then the end of the body.
                With ``chunked`` False the bytes go out as they are (the test does the framing)
                and the connection closes at the end."""
                chunked = behaviour.get("chunked", True)
                self.send_response(200)
                headers = {"Content-Type": "text/event-stream", **behaviour.get("headers", {})}
                if chunked:
                    headers["Transfer-Encoding"] = "chunked"
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()

                def framed(data):
                    return b"%x\r\n%s\r\n" % (len(data), data) if chunked else data

                head = "".join(sse(behaviour.get("events", ()))).encode()
                raw = framed(behaviour["raw"])
                record = {"started": time.monotonic(), "ended": None, "sent": 0, "complete": False}
                with fake._lock:
                    fake.raw_bodies.append(record)
                seconds = behaviour.get("raw_seconds")
                try:
                    if head:
                        self.wfile.write(framed(head))
                    for count in itertools.count():
                        if (time.monotonic() - record["started"] > seconds if seconds is not None
                                else count >= behaviour.get("raw_repeat", 1)):
                            break
                        self.wfile.write(raw)
                        record["sent"] += len(behaviour["raw"])
                    if chunked:
                        self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                    record["complete"] = True
                except (BrokenPipeError, ConnectionResetError):
                    pass
                if not (chunked and record["complete"]):
                    self.close_connection = True
                record["ended"] = time.monotonic()

            def _wait(self, seconds):
                """Sleep, but notice at once a client that closes the connection meanwhile."""
                deadline = time.monotonic() + seconds
                while (left := deadline - time.monotonic()) > 0:
                    readable, _, _ = select.select([self.connection], [], [], min(left, 0.05))
                    if readable:
                        try:
                            closed = self.connection.recv(1, socket.MSG_PEEK) == b""
                        except ValueError:  # TLS: no peeking; just sleep
                            closed = False
                        except OSError:
                            closed = True
                        if closed:
                            raise BrokenPipeError("client closed the connection")
                        time.sleep(min(left, 0.05))

        return Handler
