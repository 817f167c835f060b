"""Settings read from the environment: defaults, parsing, and values refused at start-up."""

import pytest

from responses_proxy.config import ConfigError, load_config


def test_the_upstream_event_limit_defaults_to_16_mib_and_can_be_set():
    assert load_config(environ={})["MAX_EVENT_BYTES"] == 16 * 1024 * 1024
    assert load_config(environ={"RESPONSES_PROXY_MAX_EVENT_BYTES": "65536"})["MAX_EVENT_BYTES"] == 65536


@pytest.mark.parametrize("value", ["0", "1023", "-5", "lots"])
def test_an_upstream_event_limit_that_would_fail_every_stream_is_refused(value):
    with pytest.raises(ConfigError, match="RESPONSES_PROXY_MAX_EVENT_BYTES"):
        load_config(environ={"RESPONSES_PROXY_MAX_EVENT_BYTES": value})


def test_the_admin_token_is_unset_by_default_and_read_when_set():
    assert load_config(environ={})["ADMIN_TOKEN"] is None
    token = "x" * 16
    assert load_config(environ={"RESPONSES_PROXY_ADMIN_TOKEN": token})["ADMIN_TOKEN"] == token


def test_an_admin_token_short_enough_to_guess_is_refused():
    with pytest.raises(ConfigError, match="RESPONSES_PROXY_ADMIN_TOKEN: must be at least 16 characters"):
        load_config(environ={"RESPONSES_PROXY_ADMIN_TOKEN": "hunter2"})
