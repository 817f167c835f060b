"""The WebSocket transport's pieces that need no server: frames, the upgrade's refusals, settings.

The transport itself runs under gunicorn in tests/e2e/test_websocket_e2e.py.
"""

import pytest
from wsproto.frame_protocol import FrameProtocol, Opcode

from responses_proxy.config import ConfigError, load_config
from responses_proxy.responses.websocket import text_frame, text_frames
from tests.helpers import make_app

UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
           "Sec-WebSocket-Version": "13"}


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 300_000])
def test_a_text_frame_is_what_a_client_decodes_as_one_text_message(size):
    payload = ("a" * (size - 2) + "é").encode() if size >= 2 else b"a" * size
    assert len(payload) == size
    client = FrameProtocol(client=True, extensions=[])
    client.receive_bytes(text_frame(payload))
    [frame] = client.received_frames()
    assert frame.opcode is Opcode.TEXT and frame.message_finished
    assert frame.payload == payload.decode()


def test_a_batch_of_events_is_one_message_each():
    events = [(b"response.created", b'{"a":1}'), (b"", b'{"b":"' + b"x" * 200 + b'"}')]
    client = FrameProtocol(client=True, extensions=[])
    client.receive_bytes(text_frames(events))
    assert [frame.payload for frame in client.received_frames()] == [data.decode() for _, data in events]


def test_websockets_turned_off_answer_the_upgrade_426_before_the_key(tmp_path, upstream):
    app = make_app(tmp_path, upstream.base_url, WEBSOCKETS=False)
    reply = app.test_client().get("/v1/responses", headers=UPGRADE)
    assert reply.status_code == 426
    assert reply.json["error"] == {
        "message": "WebSockets are turned off on this gateway: send the request as POST /v1/responses.",
        "type": "invalid_request_error", "code": "websockets_disabled", "param": None}


def test_the_upgrade_needs_a_key(client):
    reply = client.get("/v1/responses", headers=UPGRADE)
    assert reply.status_code == 401
    assert reply.json["error"]["code"] == "invalid_api_key"


def test_a_server_that_cannot_hand_its_socket_over_answers_426(client, auth):
    """Another WSGI server than gunicorn (here Werkzeug's test client): the client falls back to POST."""
    reply = client.get("/v1/responses", headers={**UPGRADE, **auth})
    assert reply.status_code == 426
    assert reply.json["error"]["code"] == "websockets_unavailable"


def test_a_plain_get_is_a_405(client, auth):
    reply = client.get("/v1/responses", headers=auth)
    assert reply.status_code == 405
    assert reply.json["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize("raw, expected", [("on", True), ("OFF", False), ("1", True), ("no", False)])
def test_the_websockets_switch(raw, expected):
    assert load_config(environ={"RESPONSES_PROXY_WEBSOCKETS": raw})["WEBSOCKETS"] is expected


def test_a_bad_switch_names_the_variable():
    with pytest.raises(ConfigError, match="RESPONSES_PROXY_WEBSOCKETS"):
        load_config(environ={"RESPONSES_PROXY_WEBSOCKETS": "sometimes"})
