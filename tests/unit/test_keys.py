"""Tokens and routing keys are safe to paste where people paste them."""

from __future__ import annotations

import argparse

from laneway.core.keys import is_routing_key, new_api_token, new_routing_key


def test_api_tokens_never_read_as_a_command_line_option() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--token")
    for _ in range(2000):  # a leading '-' came up once in 64 tokens before
        token = new_api_token()
        assert not token.startswith("-")
        assert parser.parse_args(["--token", token]).token == token


def test_routing_keys_have_their_shape() -> None:
    keys = {new_routing_key() for _ in range(200)}
    assert len(keys) == 200
    assert all(is_routing_key(k) for k in keys)
