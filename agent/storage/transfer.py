"""Moving a model in and an artifact out: the one module that talks to boto3 and to URLs.

    download(uri, dest, *, max_bytes) -> dest          s3://, https:// (presigned URLs), file://
    upload(path, uri, *, kms_key_id=None) -> uri       s3://, file://

boto3 finds its endpoint, region and credentials itself (AWS_ENDPOINT_URL_S3, AWS_REGION,
AWS_ACCESS_KEY_ID, a profile, an instance role, ...); nothing here names an endpoint.
Retries are botocore's "standard" mode (3 attempts, backoff); a later change adds outage handling.
Downloads stream to a temporary file beside `dest` and are renamed into place only when
complete and within `max_bytes`, so a half-fetched model never looks like a fetched one.

Foreign errors become Neo FailureReasons here, `raise ... from exc`:

    ClientError: InputConfiguration   the input object is missing, its bucket is missing, its URI is bad
                                      ("S3 object does not exist. Bucket: b, Key: k", Neo's own words)
    ClientError: OutputConfiguration  the same, on the output side (S3OutputLocation, KmsKeyId)
    ClientError: ClientPermission     S3 or the URL said AccessDenied / 403 (or a local file is unreadable)
    ClientError: ModelSizeTooBig      the input is larger than max_bytes
    ServerError: StorageUnreachable   no connection, a timeout, or a 5xx that outlasted the retries
    ServerError: StorageCredentials   this device has no usable AWS credentials
    ServerError: StorageError         anything else botocore raised
"""
from __future__ import annotations

import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO, Iterable

from agent.errors import ClientError, JobFailure, ServerError
from agent.storage.uri import Location, parse

CHUNK_BYTES = 1 << 20
HTTP_TIMEOUT_S = 60.0
USER_AGENT = "neo-edge-agent"
NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
DENIED_CODES = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled", "InvalidAccessKeyId",
                "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "AccountProblem"}
INPUT, OUTPUT = "InputConfiguration", "OutputConfiguration"


def download(uri: str, dest: Path, *, max_bytes: int) -> Path:
    """Fetch `uri` into the file `dest` (parents created); refuse anything over `max_bytes`."""
    loc = parse(uri, keyword=INPUT)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            if loc.scheme == "s3":
                _download_s3(loc, out, max_bytes)
            elif loc.scheme == "file":
                _download_file(loc, out, max_bytes)
            else:
                _download_url(loc, out, max_bytes)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def upload(path: Path, uri: str, *, kms_key_id: str | None = None) -> str:
    """Put the file `path` at `uri`; with `kms_key_id`, S3 encrypts it with that KMS key."""
    loc = parse(uri, keyword=OUTPUT)
    if loc.scheme == "s3":
        _upload_s3(Path(path), loc, kms_key_id)
    elif loc.scheme == "file":
        if kms_key_id:
            raise ClientError(OUTPUT, "KmsKeyId applies only to s3:// output locations, not to "
                                      f"{uri}; refusing to write the artifact unencrypted")
        _upload_file(Path(path), loc)
    else:
        raise ClientError(OUTPUT, f"The output location must be an s3:// or file:// URI, got {loc.redacted()}")
    return uri


# --- s3 ---------------------------------------------------------------------------------------

def _s3_client():
    """A client from a fresh session, so each transfer reads credentials, region and endpoint
    anew (boto3's default session would cache the credentials of its first use)."""
    # Imported here, not at the top: the benchmark worker imports agent.storage and should not
    # carry boto3's memory into its own peak RSS.
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client("s3", config=Config(retries={"mode": "standard"}))


def _download_s3(loc: Location, out: BinaryIO, max_bytes: int) -> None:
    if not loc.key or loc.key.endswith("/"):
        raise ClientError(INPUT, f"The S3 URI must name an object, not a prefix: {loc.uri}")
    try:
        response = _s3_client().get_object(Bucket=loc.bucket, Key=loc.key)
        body = response["Body"]
        try:
            _check_size(response.get("ContentLength"), max_bytes, loc)
            _copy_limited(body.iter_chunks(CHUNK_BYTES), out, max_bytes, loc)
        finally:
            body.close()
    except JobFailure:
        raise
    except Exception as exc:
        raise _s3_failure(exc, loc, INPUT) from exc


def _upload_s3(path: Path, loc: Location, kms_key_id: str | None) -> None:
    from boto3.exceptions import S3UploadFailedError
    from boto3.s3.transfer import TransferConfig

    if not loc.key or loc.key.endswith("/"):
        raise ClientError(OUTPUT, f"The S3 URI must name an object, not a prefix: {loc.uri}")
    extra = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_id} if kms_key_id else None
    # "classic" keeps the transfer in boto3's own threads whether or not awscrt is installed.
    config = TransferConfig(preferred_transfer_client="classic")
    try:
        _s3_client().upload_file(str(path), loc.bucket, loc.key, ExtraArgs=extra, Config=config)
    except S3UploadFailedError as exc:
        # boto3 wraps the botocore error it caught; the original code is on the context.
        cause = exc.__context__ if exc.__context__ is not None else exc
        raise _s3_failure(cause, loc, OUTPUT, kms_key_id) from exc
    except Exception as exc:
        raise _s3_failure(exc, loc, OUTPUT, kms_key_id) from exc


def _s3_failure(exc: BaseException, loc: Location, keyword: str, kms_key_id: str | None = None) -> JobFailure:
    """Neo's words for what botocore raised while touching `loc`."""
    from botocore import exceptions as bce

    where = f"Bucket: {loc.bucket}, Key: {loc.key}"
    if isinstance(exc, bce.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        message = error.get("Message") or code
        if code in NOT_FOUND_CODES:
            return ClientError(keyword, f"S3 object does not exist. {where}")
        if code == "NoSuchBucket":
            return ClientError(keyword, f"S3 bucket does not exist. Bucket: {loc.bucket}")
        if code in DENIED_CODES:
            return ClientError("ClientPermission", f"Access denied by S3 ({code}). {where}")
        if code.startswith("KMS."):
            return ClientError(keyword, f"KMS key {kms_key_id} cannot be used: {code}: {message}. {where}")
        if status >= 500:
            return ServerError("StorageUnreachable", f"S3 answered {status} {code}: {message}. {where}")
        return ClientError(keyword, f"S3 refused the request: {code}: {message}. {where}")
    if isinstance(exc, (bce.NoCredentialsError, bce.PartialCredentialsError, bce.CredentialRetrievalError)):
        return ServerError("StorageCredentials", f"No usable AWS credentials on this device: {exc}")
    if isinstance(exc, (bce.ConnectionError, bce.HTTPClientError)):
        return ServerError("StorageUnreachable", f"Cannot reach S3 ({type(exc).__name__}: {exc}). {where}")
    return ServerError("StorageError", f"{type(exc).__name__}: {exc}. {where}")


# --- https ------------------------------------------------------------------------------------

class _NoDowngradeRedirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to URLs that parse() would accept itself (no https -> remote http)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        parse(newurl, keyword=INPUT)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _download_url(loc: Location, out: BinaryIO, max_bytes: int) -> None:
    opener = urllib.request.build_opener(_NoDowngradeRedirect)
    request = urllib.request.Request(loc.uri, headers={"User-Agent": USER_AGENT})
    url = loc.redacted()
    try:
        with opener.open(request, timeout=HTTP_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            _check_size(int(length) if length and length.isdigit() else None, max_bytes, loc)
            _copy_limited(iter(lambda: response.read(CHUNK_BYTES), b""), out, max_bytes, loc)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise ClientError(INPUT, f"Object does not exist at {url} (HTTP 404)") from exc
        if exc.code in (401, 403):
            raise ClientError("ClientPermission", f"Access denied to {url} (HTTP {exc.code}); "
                                                  "a presigned URL may have expired") from exc
        if exc.code >= 500:
            raise ServerError("StorageUnreachable", f"{url} answered HTTP {exc.code}") from exc
        raise ClientError(INPUT, f"{url} answered HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServerError("StorageUnreachable", f"Cannot download {url}: {reason}") from exc


# --- file -------------------------------------------------------------------------------------

def _download_file(loc: Location, out: BinaryIO, max_bytes: int) -> None:
    source = Path(loc.path)
    try:
        if not source.is_file():
            raise ClientError(INPUT, f"File does not exist: {source}")
        _check_size(source.stat().st_size, max_bytes, loc)
        with source.open("rb") as src:
            _copy_limited(iter(lambda: src.read(CHUNK_BYTES), b""), out, max_bytes, loc)
    except PermissionError as exc:
        raise ClientError("ClientPermission", f"This agent may not read {source}") from exc


def _upload_file(path: Path, loc: Location) -> None:
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


def _check_size(size: int | None, max_bytes: int, loc: Location) -> None:
    if size is not None and size > max_bytes:
        raise _too_big(loc, str(size), max_bytes)


def _copy_limited(chunks: Iterable[bytes], out: BinaryIO, max_bytes: int, loc: Location) -> int:
    """Copy while counting: a server may send more than it announced, or announce nothing."""
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > max_bytes:
            raise _too_big(loc, f"more than {max_bytes}", max_bytes)
        out.write(chunk)
    return total
