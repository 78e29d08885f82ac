"""S3 objects in and out, resumable and verified: the only module that calls S3's API.

    fetch_object(client, loc, out, max_bytes, patience) -> check made ("sha256", "md5-etag", "size")
    put_object(client, path, loc, kms_key_id, patience)  -> Stored(uri, size, checksum_sha256, parts)

Downloads resume after an outage with a Range request pinned to the first response's ETag
(If-Match), so a model replaced mid-download is never stitched from two versions.

Uploads of up to MULTIPART_THRESHOLD go in one PutObject; larger ones in PART_BYTES parts. Every
request carries the SHA-256 of its bytes, so S3 refuses a part that was damaged on the way.
After an outage a multipart upload asks S3 which parts it holds (ListParts) and sends only the
rest. When S3 no longer knows the upload (it answers NoSuchUpload to ListParts, UploadPart or
CompleteMultipartUpload: a lifecycle rule or another client aborted it, or the server lost its
state), the upload starts again, at most MAX_UPLOAD_RESTARTS times. Done means verified:
HeadObject's size and SHA-256 must equal ours before the caller may call the job COMPLETED; a
server that stores no checksum gets the object read back and hashed instead. With a KmsKeyId
every request asks for SSE-KMS with that key.

botocore's errors become Neo FailureReasons (see `failure`); outages are waited out by the
caller's Patience.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable

from agent.errors import ClientError, JobFailure, ServerError
from agent.storage.archive import hash_file
from agent.storage.integrity import Sink, b64, composite_sha256, same_checksum
from agent.storage.retry import Patience
from agent.storage.uri import Location

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
PART_BYTES = 8 << 20  # S3's minimum part is 5 MiB; 8 MiB is the AWS CLI's default
MULTIPART_THRESHOLD = 16 << 20
MAX_PARTS = 10_000
MAX_UPLOAD_RESTARTS = 3  # a store that forgets one upload more often than this will forget the next
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
DENIED_CODES = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled", "InvalidAccessKeyId",
                "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "AccountProblem"}
INPUT, OUTPUT = "InputConfiguration", "OutputConfiguration"


@dataclasses.dataclass(frozen=True)
class Stored:
    """What S3 holds after a verified upload."""

    uri: str
    size: int
    checksum_sha256: str
    parts: int
    verified_by: str  # "sha256" (S3's stored checksum) or "read-back"


def default_client():
    """A client from a fresh boto3 session: credentials, region and endpoint read anew each time
    (AWS_ENDPOINT_URL_S3, AWS_DEFAULT_REGION or AWS_REGION, ...), botocore's standard retries,
    bounded timeouts."""
    import boto3

    return boto3.session.Session(region_name=environment_region()).client("s3", config=client_config())


def environment_region() -> str | None:
    """AWS_DEFAULT_REGION, else AWS_REGION; None leaves the choice to botocore (the profile's
    region, else us-east-1). botocore reads only AWS_DEFAULT_REGION, but AWS_REGION is what
    the other AWS SDKs read and what many environments set alone; a device given only that
    would otherwise sign for and talk to us-east-1, not the region it was given."""
    return os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or None


def client_config():
    from botocore.config import Config

    return Config(retries={"mode": "standard"}, connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S)


# --- download -------------------------------------------------------------------------------

def fetch_object(client, loc: Location, out: BinaryIO, max_bytes: int, patience: Patience,
                 too_big: Callable[[int | None], JobFailure]) -> str:
    if not loc.key or loc.key.endswith("/"):
        raise ClientError(INPUT, f"The S3 URI must name an object, not a prefix: {loc.uri}")
    sink = Sink(out, max_bytes, too_big)
    first: dict[str, Any] = {}

    def attempt() -> None:
        kwargs: dict[str, Any] = {"Bucket": loc.bucket, "Key": loc.key}
        if sink.size:
            kwargs.update(Range=f"bytes={sink.size}-", IfMatch=first["ETag"])
        else:
            kwargs["ChecksumMode"] = "ENABLED"
        try:
            response = client.get_object(**kwargs)
            if not first:
                first.update(response)
                length = response.get("ContentLength")
                if length is not None and length > max_bytes:
                    raise too_big(length)
            body = response["Body"]
            try:
                for chunk in body.iter_chunks(CHUNK_BYTES):
                    sink.write(chunk)
            finally:
                body.close()
        except JobFailure:
            raise
        except Exception as exc:
            raise failure(exc, loc, INPUT) from exc

    patience.call(f"downloading {loc.uri}", attempt)
    return sink.check(where=f"Bucket: {loc.bucket}, Key: {loc.key}", length=first.get("ContentLength"),
                      checksum_sha256=first.get("ChecksumSHA256"), etag=first.get("ETag"),
                      encryption=first.get("ServerSideEncryption"))


# --- upload ---------------------------------------------------------------------------------

def put_object(client, path: Path, loc: Location, kms_key_id: str | None, patience: Patience,
               on_part: Callable[[int, int], None] | None = None) -> Stored:
    """Upload `path` to `loc` and verify it; `on_part(done, total)` after each part."""
    if not loc.key or loc.key.endswith("/"):
        raise ClientError(OUTPUT, f"The S3 URI must name an object, not a prefix: {loc.uri}")
    path = Path(path)
    size = path.stat().st_size
    sse = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_id} if kms_key_id else {}
    what = f"uploading {path.name} to {loc.uri}"

    def call(operation: Callable[[], Any]) -> Any:
        try:
            return operation()
        except JobFailure:
            raise
        except Exception as exc:
            raise failure(exc, loc, OUTPUT, kms_key_id) from exc

    if size <= MULTIPART_THRESHOLD:
        data = path.read_bytes()
        expected = b64(hashlib.sha256(data).digest())
        patience.call(what, lambda: call(lambda: client.put_object(
            Bucket=loc.bucket, Key=loc.key, Body=data, ChecksumAlgorithm="SHA256",
            ChecksumSHA256=expected, **sse)))
        parts = 1
        if on_part is not None:
            on_part(1, 1)
    else:
        expected, parts = _multipart(client, path, size, loc, sse, patience, call, what, on_part)
    return _verify(client, path, size, expected, parts, loc, patience, call)


def _part_size(size: int) -> int:
    part = PART_BYTES
    while -(-size // part) > MAX_PARTS:
        part *= 2
    return part


def _multipart(client, path: Path, size: int, loc: Location, sse: dict, patience: Patience, call, what: str,
               on_part) -> tuple[str, int]:
    part_bytes = _part_size(size)
    count = -(-size // part_bytes)
    digests: list[bytes] = []
    with path.open("rb") as src:
        for _ in range(count):
            digests.append(hashlib.sha256(src.read(part_bytes)).digest())
    upload: dict[str, Any] = {}
    done: dict[int, dict] = {}
    restarts = [0]

    def start() -> None:
        response = call(lambda: client.create_multipart_upload(
            Bucket=loc.bucket, Key=loc.key, ChecksumAlgorithm="SHA256", **sse))
        upload["id"] = response["UploadId"]
        done.clear()

    def start_again(answer: str) -> None:
        """S3 has forgotten the upload and every part it held: start a new one, within bounds."""
        forgotten = upload.pop("id")  # nothing left to abort if this gives up
        if restarts[0] >= MAX_UPLOAD_RESTARTS:
            raise ClientError(OUTPUT, f"S3 forgot the multipart upload {restarts[0] + 1} times (last: upload "
                                      f"{forgotten}, NoSuchUpload to {answer}); a lifecycle rule or another "
                                      f"client may be aborting uploads under this prefix. "
                                      f"Bucket: {loc.bucket}, Key: {loc.key}")
        restarts[0] += 1
        log.warning("%s: S3 no longer knows upload %s (NoSuchUpload to %s); starting it again",
                    what, forgotten, answer)
        start()

    def resync() -> None:
        """After an outage: which parts does S3 still hold? None at all if it forgot the upload."""
        try:
            listed = call(lambda: client.list_parts(Bucket=loc.bucket, Key=loc.key, UploadId=upload["id"]))
        except ClientError as exc:
            if not _no_such_upload(exc):
                raise
            start_again("ListParts")
            return
        held = {p["PartNumber"]: p for p in listed.get("Parts", [])}
        for number in list(done):
            if number not in held:
                done.pop(number)

    def send(number: int) -> None:
        with path.open("rb") as src:
            src.seek((number - 1) * part_bytes)
            body = src.read(part_bytes)
        response = call(lambda: client.upload_part(
            Bucket=loc.bucket, Key=loc.key, UploadId=upload["id"], PartNumber=number, Body=body,
            ChecksumAlgorithm="SHA256", ChecksumSHA256=b64(digests[number - 1])))
        done[number] = {"PartNumber": number, "ETag": response["ETag"], "ChecksumSHA256": b64(digests[number - 1])}

    def send_rest() -> None:
        """The parts S3 lacks, then the completion; from the first part whenever S3 forgets the upload."""
        while True:
            try:
                for number in range(1, count + 1):
                    if number not in done:
                        step = f"UploadPart {number}"
                        send(number)
                        if on_part is not None:
                            on_part(len(done), count)
                step = "CompleteMultipartUpload"
                call(lambda: client.complete_multipart_upload(
                    Bucket=loc.bucket, Key=loc.key, UploadId=upload["id"],
                    MultipartUpload={"Parts": [done[n] for n in range(1, count + 1)]}))
                return
            except ClientError as exc:
                if not _no_such_upload(exc):
                    raise
                start_again(step)

    def send_all() -> None:
        # The first attempt starts the upload; a later one follows an outage, so ask S3 first.
        if "id" not in upload:
            start()
        else:
            resync()
        send_rest()

    try:
        patience.call(what, send_all)
    except BaseException:
        if "id" in upload:
            _abort(client, loc, upload["id"])
        raise
    return f"{composite_sha256(digests)}-{count}", count


def _no_such_upload(failure: ClientError) -> bool:
    """Did S3 answer that it does not know the upload (aborted, completed, or lost)?"""
    response = getattr(failure.__cause__, "response", None) or {}
    return response.get("Error", {}).get("Code") == "NoSuchUpload"


def file_sha256(path: Path) -> bytes:
    return hash_file(path, hashlib.sha256()).digest()


def _abort(client, loc: Location, upload_id: str) -> None:
    """Best effort: S3 would otherwise bill for the parts until a lifecycle rule removes them."""
    try:
        client.abort_multipart_upload(Bucket=loc.bucket, Key=loc.key, UploadId=upload_id)
    except Exception as exc:  # the job is failing anyway; say so, do not mask its reason
        log.warning("could not abort multipart upload %s of %s: %s", upload_id, loc.uri, exc)


def _verify(client, path: Path, size: int, expected: str, parts: int, loc: Location, patience: Patience,
            call) -> Stored:
    head = patience.call(f"verifying {loc.uri}", lambda: call(lambda: client.head_object(
        Bucket=loc.bucket, Key=loc.key, ChecksumMode="ENABLED")))
    where = f"Bucket: {loc.bucket}, Key: {loc.key}"
    if head.get("ContentLength") != size:
        raise ServerError("StorageError", f"S3 holds {head.get('ContentLength')} bytes after the upload, "
                                          f"the artifact has {size}. {where}")
    stored = head.get("ChecksumSHA256")
    if stored:
        if not same_checksum(stored, expected):
            raise ServerError("StorageError", f"S3's SHA-256 {stored} differs from the artifact's {expected} "
                                              f"after the upload. {where}")
        return Stored(loc.uri, size, expected, parts, "sha256")
    log.info("%s: S3 stored no checksum; reading the object back to verify it", loc.uri)

    def read_back() -> bytes:
        digest = hashlib.sha256()
        body = call(lambda: client.get_object(Bucket=loc.bucket, Key=loc.key))["Body"]
        try:
            for chunk in body.iter_chunks(CHUNK_BYTES):
                digest.update(chunk)
        finally:
            body.close()
        return digest.digest()

    if patience.call(f"reading back {loc.uri}", read_back) != file_sha256(path):
        raise ServerError("StorageError", f"the object read back from S3 differs from the artifact. {where}")
    return Stored(loc.uri, size, expected, parts, "read-back")


# --- errors ---------------------------------------------------------------------------------

def failure(exc: BaseException, loc: Location, keyword: str, kms_key_id: str | None = None) -> JobFailure:
    """Neo's words for what botocore raised while touching `loc`."""
    from boto3.exceptions import S3UploadFailedError
    from botocore import exceptions as bce

    if isinstance(exc, S3UploadFailedError) and exc.__context__ is not None:
        exc = exc.__context__  # boto3 wraps the botocore error it caught
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
        if code in ("PreconditionFailed", "412"):
            return ClientError(keyword, f"The S3 object changed while it was being downloaded. {where}")
        if status >= 500 or code in ("SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable"):
            return ServerError("StorageUnreachable", f"S3 answered {status} {code}: {message}. {where}")
        return ClientError(keyword, f"S3 refused the request: {code}: {message}. {where}")
    if isinstance(exc, (bce.NoCredentialsError, bce.PartialCredentialsError, bce.CredentialRetrievalError)):
        return ServerError("StorageCredentials", f"No usable AWS credentials on this device: {exc}")
    if isinstance(exc, (bce.ConnectionError, bce.HTTPClientError, bce.ResponseStreamingError,
                        bce.IncompleteReadError)):
        return ServerError("StorageUnreachable", f"Cannot reach S3 ({type(exc).__name__}: {exc}). {where}")
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return ServerError("StorageUnreachable", f"Cannot reach S3 ({type(exc).__name__}: {exc}). {where}")
    return ServerError("StorageError", f"{type(exc).__name__}: {exc}. {where}")
