"""What ``create_app`` wires: the routes the gateway serves and nothing else."""


def test_there_is_no_static_route(app, client):
    assert "static" not in app.view_functions
    reply = client.get("/static/wsgi.py")
    assert reply.status_code == 404
    assert reply.json["error"]["code"] == "not_found"
