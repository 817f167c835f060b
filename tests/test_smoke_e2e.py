"""The gateway answers through gunicorn: the shortest path a user takes."""

import requests


def test_non_streaming_text_answer_through_gunicorn(e2e):
    reply = requests.post(e2e.url + "/v1/responses", headers={"Authorization": f"Bearer {e2e.key}"},
                          json={"model": "gpt-4.1", "input": "hi"}, timeout=10)
    assert reply.status_code == 200
    body = reply.json()
    assert body["status"] == "completed"
    assert body["output"][0]["content"][0]["text"] == "Hello from the fake upstream."
