"""Redaction catches a secret in its raw, base64 and URL-encoded forms, and across chunks."""

import base64
from urllib.parse import quote, quote_plus

import pytest

from clawpen.vault.redact import Redactor

VALUE = b"p@ss/word+with space=&"


@pytest.mark.parametrize(
    "form",
    [
        VALUE,
        base64.b64encode(VALUE),
        base64.b64encode(VALUE).rstrip(b"="),
        base64.urlsafe_b64encode(VALUE),
        base64.urlsafe_b64encode(VALUE).rstrip(b"="),
        quote(VALUE).encode(),
        quote(VALUE, safe="").encode(),
        quote_plus(VALUE).encode(),
    ],
)
def test_every_form_is_redacted(form):
    out = Redactor({"TOKEN": VALUE}).redact(b"before " + form + b" after")
    assert out == b"before [REDACTED:TOKEN] after"


def test_value_inside_basic_auth_base64():
    header = base64.b64encode(b"alice:" + VALUE)
    out = Redactor({"TOKEN": VALUE}).redact(b"Authorization: Basic " + header)
    assert b"[REDACTED:TOKEN]" in out
    assert base64.b64encode(VALUE)[4:-4] not in out


def test_short_values_are_ignored():
    r = Redactor({"SHORT": b"abc", "LONG": b"abcd"})
    assert r.redact(b"abc ab") == b"abc ab"
    assert r.redact(b"xabcdx") == b"x[REDACTED:LONG]x"


def test_longest_form_wins_and_text_api():
    r = Redactor({"A_KEY": b"secret", "B_KEY": b"secret-longer"})
    assert r.redact(b"secret-longer secret") == b"[REDACTED:B_KEY] [REDACTED:A_KEY]"
    assert r.redact_text("x secret-longer ü") == "x [REDACTED:B_KEY] ü"
    assert r.redact_lines(b"a secret\nb\n") == b"a [REDACTED:A_KEY]\nb\n"


def test_no_secrets_passes_data_through():
    r = Redactor({})
    assert r.redact(b"anything") == b"anything"
    stream = r.stream()
    assert stream.feed(b"abc") + stream.flush() == b"abc"


def test_stream_catches_a_value_split_across_chunks():
    r = Redactor({"TOKEN": VALUE})
    data = b"log line one " + VALUE + b" then " + base64.b64encode(VALUE) + b" end\n"
    for size in (1, 3, 7, 50):
        stream = r.stream()
        out = b"".join(stream.feed(data[i : i + size]) for i in range(0, len(data), size)) + stream.flush()
        assert out == r.redact(data)
        assert VALUE not in out


def test_repr_has_names_only():
    assert "hunter22" not in repr(Redactor({"DB_PASS": b"hunter22"}))
