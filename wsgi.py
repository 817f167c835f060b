from gevent import monkey
monkey.patch_all()

from responses_proxy import create_app  # noqa: E402  (after the patch, by design)

app = create_app()
