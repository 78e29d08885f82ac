"""URIs: what parse() accepts, what it refuses, and join()'s slash handling."""
from __future__ import annotations

import pytest

from agent.errors import ClientError
from agent.storage.uri import join, parse


def test_s3_uri():
    loc = parse("s3://my-bucket/models/resnet/model.tar.gz")
    assert (loc.scheme, loc.bucket, loc.key) == ("s3", "my-bucket", "models/resnet/model.tar.gz")


def test_s3_key_keeps_question_marks_and_hashes():
    assert parse("s3://bucket/a?b#c").key == "a?b#c"


def test_s3_bucket_only_has_empty_key():
    assert parse("s3://bucket").key == ""
    assert parse("s3://bucket/").key == ""


def test_https_uri_and_redaction():
    loc = parse("https://example.com/b/model.tar.gz?X-Amz-Signature=secret")
    assert loc.scheme == "https" and loc.path == "/b/model.tar.gz"
    assert "secret" not in loc.redacted()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "localhost", "[::1]"])
def test_http_allowed_for_loopback(host):
    assert parse(f"http://{host}:9000/b/k").scheme == "http"


def test_http_refused_for_remote_hosts():
    with pytest.raises(ClientError, match="loopback"):
        parse("http://example.com/model.tar.gz")


def test_file_uri():
    assert parse("file:///var/lib/m%20odel.tar.gz").path == "/var/lib/m odel.tar.gz"
    assert parse("file://localhost/x").path == "/x"


@pytest.mark.parametrize("uri, words", [
    ("", "empty"),
    ("ftp://host/x", "Unsupported URI scheme"),
    ("models/model.tar.gz", "Unsupported URI scheme"),
    ("s3://Bad_Bucket!/k", "bucket name"),
    ("s3:///key", "bucket name"),
    ("https:///path", "no host"),
    ("file://otherhost/x", "local path"),
])
def test_bad_uris_name_the_request_member(uri, words):
    with pytest.raises(ClientError, match=words) as info:
        parse(uri, keyword="OutputConfiguration")
    assert info.value.reason.startswith("ClientError: OutputConfiguration: ")


@pytest.mark.parametrize("prefix", ["s3://b/out", "s3://b/out/"])
def test_join_with_or_without_slash(prefix):
    assert join(prefix, "model.tar.gz") == "s3://b/out/model.tar.gz"


def test_join_bucket_root_and_file():
    assert join("s3://b", "m.tar.gz") == "s3://b/m.tar.gz"
    assert join("file:///out/", "m.tar.gz") == "file:///out/m.tar.gz"


@pytest.mark.parametrize("name", ["", "/abs", "../up", "a/../../up"])
def test_join_refuses_names_that_leave_the_prefix(name):
    with pytest.raises(ValueError):
        join("s3://b/out", name)
