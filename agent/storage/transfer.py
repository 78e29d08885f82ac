"""Moving a model in and an artifact out: the one module that talks to boto3 and to URLs.

    download(uri, dest, *, max_bytes, patience=None, client=None) -> Fetched(path, size, check)
    upload(path, uri, *, kms_key_id=None, patience=None, client=None, on_part=None) -> Stored

Schemes: s3:// (agent.storage.s3: resumable, checksummed, verified), https:// (presigned URLs
included) and file://. boto3 finds its endpoint, region and credentials itself
(AWS_ENDPOINT_URL_S3, AWS_DEFAULT_REGION or AWS_REGION: agent.storage.s3.default_client)
unless the caller passes a `client` made by agent.storage.credentials; nothing here names an
endpoint.

Outages are waited out by `patience` (agent.storage.retry: backoff until the job's deadline);
without one a transfer waits at most DEFAULT_PATIENCE_S. Downloads stream to a temporary file
beside `dest` and are renamed into place only when complete, within `max_bytes` and checked
(agent.storage.integrity), so a half-fetched model never looks like a fetched one.

Foreign errors become Neo FailureReasons here, `raise ... from exc`:

    ClientError: InputConfiguration   the input object is missing, its bucket is missing, its URI is
                                      bad ("S3 object does not exist. Bucket: b, Key: k", Neo's own
                                      words), or its bytes fail the integrity check
    ClientError: OutputConfiguration  the same, on the output side (S3OutputLocation, KmsKeyId)
    ClientError: ClientPermission     S3 or the URL said AccessDenied / 403 (or a local file is unreadable)
    ClientError: ModelSizeTooBig      the input is larger than max_bytes
    ServerError: StorageUnreachable   no connection, a timeout, or a 5xx, for longer than the patience
    ServerError: StorageCredentials   this device has no usable AWS credentials
    ServerError: StorageError         anything else botocore raised; an upload that fails its check
"""
from __future__ import annotations

import dataclasses
import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO, Callable

from agent.errors import ClientError, ServerError
from agent.storage import s3
from agent.storage.integrity import Sink, b64
from agent.storage.retry import Patience
from agent.storage.s3 import Stored
from agent.storage.uri import Location, parse

CHUNK_BYTES = 1 << 20
HTTP_TIMEOUT_S = 60.0
USER_AGENT = "neo-edge-agent"
INPUT, OUTPUT = "InputConfiguration", "OutputConfiguration"


@dataclasses.dataclass(frozen=True)
class Fetched:
    path: Path
    size: int
    check: str  # how the bytes were checked: "sha256", "md5-etag", "size" or "local"


def download(uri: str, dest: Path, *, max_bytes: int, patience: Patience | None = None,
             client=None) -> Fetched:
    """Fetch `uri` into the file `dest` (parents created); refuse anything over `max_bytes`."""
    loc = parse(uri, keyword=INPUT)
    patience = patience or Patience.for_seconds()
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    def too_big(size: int | None) -> ClientError:
        return _too_big(loc, str(size) if size is not None else f"more than {max_bytes}", max_bytes)

    try:
        with os.fdopen(fd, "w+b") as out:
            if loc.scheme == "s3":
                check = s3.fetch_object(client or s3.default_client(), loc, out, max_bytes, patience, too_big)
            elif loc.scheme == "file":
                check = _download_file(loc, out, max_bytes, too_big)
            else:
                check = _download_url(loc, out, max_bytes, patience, too_big)
            size = out.tell()
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Fetched(dest, size, check)


def upload(path: Path, uri: str, *, kms_key_id: str | None = None, patience: Patience | None = None,
           client=None, on_part: Callable[[int, int], None] | None = None) -> Stored:
    """Put the file `path` at `uri` and verify it there; with `kms_key_id`, S3 encrypts it with
    that KMS key."""
    loc = parse(uri, keyword=OUTPUT)
    if loc.scheme == "s3":
        return s3.put_object(client or s3.default_client(), Path(path), loc, kms_key_id,
                             patience or Patience.for_seconds(), on_part)
    if loc.scheme == "file":
        if kms_key_id:
            raise ClientError(OUTPUT, "KmsKeyId applies only to s3:// output locations, not to "
                                      f"{uri}; refusing to write the artifact unencrypted")
        return _upload_file(Path(path), loc)
    raise ClientError(OUTPUT, f"The output location must be an s3:// or file:// URI, got {loc.redacted()}")


# --- https ------------------------------------------------------------------------------------

class _NoDowngradeRedirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to URLs that parse() would accept itself (no https -> remote http)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        parse(newurl, keyword=INPUT)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _download_url(loc: Location, out: BinaryIO, max_bytes: int, patience: Patience, too_big) -> str:
    """GET the URL; after an outage resume with Range + If-Match when the server allows it."""
    opener = urllib.request.build_opener(_NoDowngradeRedirect)
    url = loc.redacted()
    sink = Sink(out, max_bytes, too_big)
    first: dict[str, str | None] = {}

    def attempt() -> None:
        headers = {"User-Agent": USER_AGENT}
        resuming = bool(sink.size) and first.get("accept-ranges") == "bytes" and bool(first.get("etag"))
        if sink.size and not resuming:
            sink.restart()
        if resuming:
            headers.update({"Range": f"bytes={sink.size}-", "If-Match": first["etag"] or ""})
        try:
            with opener.open(urllib.request.Request(loc.uri, headers=headers), timeout=HTTP_TIMEOUT_S) as response:
                if resuming and response.status != 206:
                    sink.restart()  # the server sent the whole object again
                if not first:
                    first.update({k.lower(): v for k, v in response.headers.items()})
                    length = first.get("content-length")
                    if length and length.isdigit() and int(length) > max_bytes:
                        raise too_big(int(length))
                length = response.headers.get("Content-Length")
                end = sink.size + int(length) if length and length.isdigit() else None
                for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                    sink.write(chunk)
                if end is not None and sink.size < end:  # http.client ends a short body quietly
                    raise ServerError("StorageUnreachable", f"The connection to {url} closed after "
                                                            f"{sink.size} of {end} bytes")
        except urllib.error.HTTPError as exc:
            raise _http_failure(exc, url) from exc
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServerError("StorageUnreachable", f"Cannot download {url}: {reason}") from exc

    patience.call(f"downloading {url}", attempt)
    length = first.get("content-length")
    from_s3 = any(name.startswith("x-amz") for name in first)  # only S3's ETag is an MD5
    return sink.check(where=url, length=int(length) if length and length.isdigit() else None,
                      checksum_sha256=first.get("x-amz-checksum-sha256"),
                      etag=first.get("etag") if from_s3 else None,
                      encryption=first.get("x-amz-server-side-encryption"))


def _http_failure(exc: urllib.error.HTTPError, url: str):
    if exc.code == 404:
        return ClientError(INPUT, f"Object does not exist at {url} (HTTP 404)")
    if exc.code in (401, 403):
        return ClientError("ClientPermission", f"Access denied to {url} (HTTP {exc.code}); "
                                               "a presigned URL may have expired")
    if exc.code == 412:
        return ClientError(INPUT, f"The object at {url} changed while it was being downloaded (HTTP 412)")
    if exc.code >= 500 or exc.code == 429:
        return ServerError("StorageUnreachable", f"{url} answered HTTP {exc.code}")
    return ClientError(INPUT, f"{url} answered HTTP {exc.code} {exc.reason}")


# --- file -------------------------------------------------------------------------------------

def _download_file(loc: Location, out: BinaryIO, max_bytes: int, too_big) -> str:
    source = Path(loc.path)
    try:
        if not source.is_file():
            raise ClientError(INPUT, f"File does not exist: {source}")
        if source.stat().st_size > max_bytes:
            raise too_big(source.stat().st_size)
        sink = Sink(out, max_bytes, too_big)  # counts as it copies: the file may grow meanwhile
        with source.open("rb") as src:
            for chunk in iter(lambda: src.read(CHUNK_BYTES), b""):
                sink.write(chunk)
        return "local"
    except PermissionError as exc:
        raise ClientError("ClientPermission", f"This agent may not read {source}") from exc


def _upload_file(path: Path, loc: Location) -> Stored:
    """Copy into place through a temporary file and a rename: readers never see half a file."""
    target = Path(loc.path)
    if loc.uri.endswith("/"):
        raise ClientError(OUTPUT, f"The file URI must name a file, not a directory: {loc.uri}")
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        tmp = Path(tmp_name)
        with os.fdopen(fd, "wb") as out, path.open("rb") as src:
            shutil.copyfileobj(src, out, CHUNK_BYTES)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        tmp = None
        return Stored(loc.uri, target.stat().st_size, b64(s3.file_sha256(target)), 1, "local")
    except PermissionError as exc:
        raise ClientError("ClientPermission", f"This agent may not write {target}") from exc
    except OSError as exc:
        raise ClientError(OUTPUT, f"Cannot write {target}: {exc.strerror or exc}") from exc
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


# --- shared -----------------------------------------------------------------------------------

def _too_big(loc: Location, size: str, max_bytes: int) -> ClientError:
    return ClientError("ModelSizeTooBig", f"The model at {loc.redacted()} is {size} bytes; "
                                          f"this device accepts at most {max_bytes} bytes")
