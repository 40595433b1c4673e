"""The one scrubber for secrets: masking by hand-checked examples, what it learns from settings, and log records."""

from __future__ import annotations

import base64
import logging

import pytest

from thinktuning.secrets import (
    MASK,
    Scrubber,
    is_env_var_name,
    scrub,
    scrub_tree,
    scrubbed_logs,
    strip_userinfo,
    userinfo_secrets,
)

KEY = "sk-SECRET-0123456789"


def test_scrub_replaces_every_occurrence_longest_first():
    assert scrub(f"Bearer {KEY} and again {KEY}.", [KEY]) == "Bearer *** and again ***."
    # "sk-SECRET" is inside KEY: the whole key is masked, not its start with a tail left over
    assert scrub(f"{KEY}", ["sk-SECRET", KEY]) == MASK
    assert scrub("nothing here", [KEY]) == "nothing here"


def test_scrub_leaves_empty_and_very_short_values_alone():
    assert scrub("a cat sat", ["", "a", "at"]) == "a cat sat"
    assert scrub("pass=abcd", ["abcd"]) == "pass=***"


@pytest.mark.parametrize(("text", "want"), [
    ("http://user:key@host:8000/v1", "http://***@host:8000/v1"),
    ("https://TOKEN@api.example.org/v1/chat", "https://***@api.example.org/v1/chat"),
    ("connect http://u:p@ss@h/v1 failed", "connect http://***@h/v1 failed"),  # a raw '@' in the password
    ("two: http://a:b@x/v1 http://c:d@y/v1", "two: http://***@x/v1 http://***@y/v1"),
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
    ("mail me at a@b.org", "mail me at a@b.org"),
])
def test_strip_userinfo(text, want):
    assert strip_userinfo(text) == want


@pytest.mark.parametrize(("name", "ok"), [
    ("OPENAI_API_KEY", True), ("_x1", True), ("sk-abc123", False), ("1KEY", False), ("", False),
    ("KEY WITH SPACE", False), ("KÉY", False),
])
def test_is_env_var_name(name, ok):
    assert is_env_var_name(name) is ok


def test_userinfo_secrets_cover_raw_decoded_and_basic_auth_forms():
    got = userinfo_secrets("http://me:p%40ss-word@host/v1")
    assert {"me:p%40ss-word", "p%40ss-word", "p@ss-word"} <= set(got)
    assert base64.b64encode(b"me:p@ss-word").decode() in got  # what a server echoing "Authorization: Basic" shows
    assert "tok-12345" in userinfo_secrets("https://tok-12345@host/v1")  # a token as user name
    assert userinfo_secrets("http://host/v1") == [] and userinfo_secrets(None) == []


def test_scrub_tree_cleans_every_string_and_keeps_the_shape():
    tree = {"url": "http://u:pw-long@h/v1", "n": 3, "list": ["http://a:bbbb@x", 1.5, None], "t": ("x",)}
    assert scrub_tree(tree, strip_userinfo) == {"url": "http://***@h/v1", "n": 3,
                                                "list": ["http://***@x", 1.5, None], "t": ("x",)}


def test_the_scrubber_learns_keys_from_named_variables_and_urls():
    env = {"MY_KEY": KEY, "HF_TOKEN": "hf_abcdefgh"}
    s = Scrubber.from_environment(env)
    assert s("token hf_abcdefgh") == "token ***"  # a well-known variable, whatever the config says
    assert s(f"key {KEY}") == f"key {KEY}"  # not told about MY_KEY yet
    s.learn(key_envs=["MY_KEY", "UNSET_VAR", None], urls=["http://bob:pw-9876@h/v1"], environ=env)
    assert s(f"key {KEY}, pw pw-9876, http://bob:pw-9876@h/v1") == "key ***, pw ***, http://***@h/v1"
    assert KEY not in repr(s)


def test_a_key_pasted_where_a_variable_name_belongs_is_masked_itself():
    s = Scrubber().learn(key_envs=[KEY], environ={})
    assert s(f"--api-key-env {KEY}") == "--api-key-env ***"


def test_log_records_are_scrubbed_inside_and_the_factory_is_restored(caplog):
    before = logging.getLogRecordFactory()
    log = logging.getLogger("thinktuning.test_secrets")
    with caplog.at_level(logging.WARNING), scrubbed_logs(Scrubber([KEY])):
        log.warning("server said %s at %s", f"Bearer {KEY}", "http://u:pw@h/v1")
    assert logging.getLogRecordFactory() is before
    assert caplog.records[-1].getMessage() == "server said Bearer *** at http://***@h/v1"
    assert KEY not in caplog.text
