"""Counting and hashing bytes as they stream, and checking them against what the server says.

A download is checked against the strongest thing the server offers, in this order:

    sha256     x-amz-checksum-sha256 of the whole object (S3 flexible checksums)
    md5-etag   the ETag of a single-part object that S3 did not encrypt with KMS (only then is
               an S3 ETag the MD5 of the bytes)
    size       the announced length, when the server offers nothing stronger

An upload is checked with SHA-256 both ways: S3 verifies each part against the checksum sent
with it, and the agent compares S3's stored checksum with its own before it calls the job
done. A multipart object's checksum is S3's composite: the SHA-256 of the parts' SHA-256s.
"""
from __future__ import annotations

import base64
import hashlib
import re
from typing import BinaryIO

from agent.errors import ClientError

MD5_ETAG = re.compile(r'^"?([0-9a-fA-F]{32})"?$')
KMS_ENCRYPTION = ("aws:kms", "aws:kms:dsse")


class Sink:
    """Writes chunks to `out` while counting and hashing them; refuses bytes past `max_bytes`."""

    def __init__(self, out: BinaryIO, max_bytes: int, too_big):
        self.out = out
        self.max_bytes = max_bytes
        self.too_big = too_big  # (announced size or None) -> JobFailure, raised past the limit
        self.size = 0
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False)

    def write(self, chunk: bytes) -> None:
        if self.size + len(chunk) > self.max_bytes:
            raise self.too_big(None)
        self.out.write(chunk)
        self.sha256.update(chunk)
        self.md5.update(chunk)
        self.size += len(chunk)

    def restart(self) -> None:
        """Throw away what was written (the server cannot resume): start from byte 0 again."""
        self.out.seek(0)
        self.out.truncate()
        self.size = 0
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False)

    def check(self, *, where: str, length: int | None, checksum_sha256: str | None, etag: str | None,
              encryption: str | None) -> str:
        """Compare with what the server announced; returns the check made (see the module)."""
        if length is not None and length != self.size:
            raise _mismatch(where, f"{self.size} bytes arrived, the server announced {length}")
        if checksum_sha256 and not is_composite(checksum_sha256):
            mine = b64(self.sha256.digest())
            if mine != checksum_sha256:
                raise _mismatch(where, f"SHA-256 {mine} differs from the stored checksum {checksum_sha256}")
            return "sha256"
        match = MD5_ETAG.match(etag or "")
        if match and (encryption or "") not in KMS_ENCRYPTION:
            mine = self.md5.hexdigest()
            if mine != match.group(1).lower():
                raise _mismatch(where, f"MD5 {mine} differs from the ETag {etag}")
            return "md5-etag"
        return "size"


def _mismatch(where: str, detail: str) -> ClientError:
    # A ClientError: the bytes at the source are not what the source says they are; sending the
    # same request again reads the same bytes.
    return ClientError("InputConfiguration", f"The downloaded model failed its integrity check: {detail}. {where}")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def is_composite(checksum: str) -> bool:
    """S3 writes a multipart object's composite checksum as BASE64-N (moto omits the -N)."""
    return bool(re.search(r"-\d+$", checksum))


def composite_sha256(part_digests: list[bytes]) -> str:
    """S3's checksum of a multipart object: SHA-256 over the concatenated part SHA-256s."""
    return b64(hashlib.sha256(b"".join(part_digests)).digest())


def same_checksum(stored: str, expected: str) -> bool:
    """Equal, ignoring S3's -N part-count suffix on composite checksums."""
    return re.sub(r"-\d+$", "", stored) == re.sub(r"-\d+$", "", expected)
