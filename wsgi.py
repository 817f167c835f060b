from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402  (after the patch, by design)

from responses_proxy import create_app  # noqa: E402
from responses_proxy.config import ConfigError  # noqa: E402

try:
    app = create_app()
except ConfigError as exc:  # a setting an operator mistyped: one line, not a traceback
    sys.exit(f"responses-proxy: {exc}")
