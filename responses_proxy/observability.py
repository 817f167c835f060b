"""Request ids and JSON logs."""

import logging
import re
import sys
import time
import uuid

import orjson
from flask import g, request

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the record's ``fields``."""

    def format(self, record):
        entry = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level):
    root = logging.getLogger("responses_proxy")
    if not any(getattr(handler, "_responses_proxy", False) for handler in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._responses_proxy = True
        root.addHandler(handler)
        root.propagate = False
    root.setLevel(level.upper())


def init_app(app):
    @app.before_request
    def assign_request_id():
        supplied = request.headers.get("X-Request-Id", "")
        g.request_id = supplied if REQUEST_ID.match(supplied) else "req_" + uuid.uuid4().hex
        g.started = time.perf_counter()

    @app.after_request
    def add_request_id(response):
        request_id = g.get("request_id")
        if request_id:
            response.headers["X-Request-Id"] = request_id
        return response

