"""Where a model comes from and where its artifact goes: s3://, https:// and file:// URIs.

    parse("s3://bucket/models/model.tar.gz")  -> Location(scheme="s3", bucket="bucket", key="models/model.tar.gz")
    parse("https://host/path?X-Amz-...")      -> Location(scheme="https", ...)   (a presigned URL)
    parse("file:///var/lib/models/m.tar.gz")  -> Location(scheme="file", path="/var/lib/models/m.tar.gz")

`file://` is an offline extension of Neo's API (SageMaker itself only takes s3://): a device
without network access can compile from and to its own disk. Plain `http://` is accepted only
for loopback hosts (127.0.0.0/8, ::1, localhost), which is what a local S3-protocol server
(the demo's moto, a test) hands out as presigned URLs; anywhere else a model and its
signature would cross the network in clear text, so it is refused.

A URI that cannot be used raises ClientError(keyword, ...) where keyword is the request member
it came from: "InputConfiguration" (the default) or "OutputConfiguration".
"""
from __future__ import annotations

import dataclasses
import ipaddress
import re
import urllib.parse

from agent.errors import ClientError

SCHEMES = ("s3", "https", "http", "file")
LOOPBACK_NAMES = ("localhost",)
# S3's bucket naming rules (general purpose buckets), loose enough for moto and older names.
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,61}[a-z0-9]$")


@dataclasses.dataclass(frozen=True)
class Location:
    """One parsed URI. `bucket`/`key` are set for s3, `path` for file (and the URL path for https)."""

    uri: str
    scheme: str
    bucket: str = ""
    key: str = ""
    path: str = ""

    def redacted(self) -> str:
        """The URI without its query string: a presigned URL's signature never goes into a log."""
        if self.scheme in ("https", "http"):
            parts = urllib.parse.urlsplit(self.uri)
            return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        return self.uri


def parse(uri: str, *, keyword: str = "InputConfiguration") -> Location:
    """Split `uri` into a Location, or raise ClientError(keyword, why) naming the URI."""
    if not isinstance(uri, str) or not uri:
        raise ClientError(keyword, "The URI is empty")
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ClientError(keyword, f"Unsupported URI scheme {parts.scheme or '(none)'!r} in {_short(uri)}; "
                                   "use s3://, https:// or file://")
    if scheme == "s3":
        bucket = parts.netloc
        if not BUCKET_RE.match(bucket):
            raise ClientError(keyword, f"Not a valid S3 bucket name: {bucket!r} in {uri}")
        # Not parts.path: urlsplit would eat '?' and '#', which are legal in keys.
        key = uri.split("://", 1)[1][len(bucket) + 1:]
        return Location(uri=uri, scheme="s3", bucket=bucket, key=key)
    if scheme in ("https", "http"):
        if not parts.hostname:
            raise ClientError(keyword, f"URL has no host: {_short(uri)}")
        if scheme == "http" and not _is_loopback(parts.hostname):
            raise ClientError(keyword, f"Plain http:// is accepted only for loopback hosts; use https:// "
                                       f"for {parts.hostname}")
        return Location(uri=uri, scheme=scheme, path=parts.path)
    # file://
    if parts.netloc not in ("", "localhost"):
        raise ClientError(keyword, f"file:// URIs must name a local path (file:///path), got {uri}")
    path = urllib.parse.unquote(parts.path)
    if not path.startswith("/"):
        raise ClientError(keyword, f"file:// URIs must hold an absolute path, got {uri}")
    return Location(uri=uri, scheme="file", path=path)


def join(prefix_uri: str, name: str) -> str:
    """`prefix_uri` + '/' + `name`, whether or not the prefix (an S3OutputLocation) ends in '/'."""
    if not name or name.startswith("/") or ".." in name.split("/"):
        raise ValueError(f"not a relative object name: {name!r}")
    return prefix_uri + name if prefix_uri.endswith("/") else f"{prefix_uri}/{name}"


def _is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _short(uri: str) -> str:
    """A URI fit for an error message: no query string (it may carry a signature)."""
    return uri.split("?", 1)[0]
