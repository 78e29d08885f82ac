"""Checking AWS Signature Version 4 on requests the HTTP endpoint receives.

boto3 and the AWS CLI sign every request with SigV4. A verifier does the other half: it
reads the Authorization header, looks up the secret for its access key id, and recomputes the
signature with botocore's own signer (`botocore.auth.SigV4Auth`) over what was received, so
the two sides cannot drift apart. The request's X-Amz-Date must be within five minutes of our
clock, as AWS demands, which bounds how long a captured request can be replayed.

SigV4 has no nonce, so within those five minutes a request captured off plain HTTP could be
sent again as it was. A ReplayGuard closes that for the operations that change something:
each accepted signature is remembered until its date leaves the window, and the same
signature again is refused. A request that was refused the first time (a 400 or a 500) is not
remembered, so a client's retry of it, re-signed in the same second and so identical, goes
through.

The refusals are SageMaker's (AWS's common errors), all HTTP 403, on the ApiError branch of
the agent's error tree:

    ApiError
    └── AuthError                               403
        ├── MissingAuthenticationTokenException no Authorization header at all
        ├── IncompleteSignature                 an Authorization header that cannot be read
        ├── UnrecognizedClientException         an access key id this agent was not given
        └── InvalidSignatureException           wrong signature, stale or future date, bad scope

This module owns the SigV4 use of botocore; nothing else in the agent checks signatures, and
`sign` makes the signature of the agent's own request to itself (`neo-agent health`).
"""
from __future__ import annotations

import collections
import dataclasses
import datetime
import hashlib
import hmac
import threading
import time
from typing import Callable, Iterable, Mapping

from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from agent.errors import ApiError

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "sagemaker"
SCOPE_TERMINATOR = "aws4_request"
SIGNATURE_MAX_SKEW_S = 300  # AWS's own window: a signature is good for 5 minutes either way
# Headers a valid signature must cover. AWS demands host and the date; we add the target too,
# so a signed request cannot be replayed as a different operation. boto3 signs all three.
REQUIRED_SIGNED_HEADERS = ("host", "x-amz-date", "x-amz-target")


class AuthError(ApiError):
    """The request is not signed by a key this agent accepts."""

    http_status = 403


class MissingAuthenticationTokenException(AuthError):
    code = "MissingAuthenticationTokenException"


class IncompleteSignature(AuthError):
    code = "IncompleteSignature"


class UnrecognizedClientException(AuthError):
    code = "UnrecognizedClientException"


class InvalidSignatureException(AuthError):
    code = "InvalidSignatureException"


MAX_REMEMBERED = 10_000  # signatures a ReplayGuard holds (about 2 MB); past it the oldest go first.
# Only accepted Creates, Stops and Deletes are held, for 10 minutes at most: far fewer on one device.


@dataclasses.dataclass(frozen=True)
class Signed:
    """Who signed a verified request, its signature, and when that signature stops being
    accepted (its X-Amz-Date plus the window)."""

    key_id: str
    signature: str
    expires: float


class ReplayGuard:
    """Signatures of requests already accepted, each until it expires: the second arrival of
    one is a replay. `claim` before the request is acted on, `settle` after: an accepted
    request's signature is kept, a refused one's forgotten."""

    def __init__(self, clock: Callable[[], float] = time.time, limit: int = MAX_REMEMBERED):
        self.clock = clock
        self.limit = limit
        self._seen: collections.OrderedDict[str, float] = collections.OrderedDict()  # by expiry, roughly
        self._lock = threading.Lock()

    def claim(self, signed: Signed) -> None:
        with self._lock:
            now = self.clock()
            while self._seen and (next(iter(self._seen.values())) <= now or len(self._seen) >= self.limit):
                self._seen.popitem(last=False)
            if signed.signature in self._seen:
                raise InvalidSignatureException(
                    "This signed request was already received: a request that changes something is "
                    "accepted once per signature (sign it again to repeat it)."
                )
            self._seen[signed.signature] = signed.expires

    def settle(self, signed: Signed, accepted: bool) -> None:
        if not accepted:
            with self._lock:
                self._seen.pop(signed.signature, None)

    def __len__(self) -> int:
        return len(self._seen)


class SigV4Verifier:
    """Verifies requests against `credentials`, a mapping of access key id -> secret key."""

    def __init__(
        self,
        credentials: Mapping[str, str],
        *,
        service: str = SERVICE,
        max_skew_s: float = SIGNATURE_MAX_SKEW_S,
        clock: Callable[[], float] = time.time,
    ):
        self._credentials = dict(credentials)
        self.service = service
        self.max_skew_s = max_skew_s
        self.clock = clock

    def verify(self, method: str, path: str, headers: Iterable[tuple[str, str]], body: bytes) -> Signed:
        """Return who signed the request (Signed); raise an AuthError if none did.

        `path` is the request target as received (path and query); `headers` every header
        line as received, in order, repeated names included.
        """
        received = [(name.lower(), value) for name, value in headers]
        authorization = [value for name, value in received if name == "authorization"]
        if not authorization:
            raise MissingAuthenticationTokenException("Missing Authentication Token")
        key_id, date, region, service, signed_names, signature = _parse_authorization(authorization[0])
        if service != self.service:
            raise InvalidSignatureException(f"Credential should be scoped to correct service: '{self.service}'.")

        secret = self._credentials.get(key_id)
        if secret is None:
            raise UnrecognizedClientException("The security token included in the request is invalid.")
        missing = [name for name in REQUIRED_SIGNED_HEADERS if name not in signed_names]
        if missing:
            raise InvalidSignatureException(f"The request must sign the header(s) {', '.join(missing)}.")
        by_name: dict[str, list[str]] = {}
        for name, value in received:
            by_name.setdefault(name, []).append(value)
        absent = [name for name in signed_names if name not in by_name]
        if absent:
            raise InvalidSignatureException(f"SignedHeaders names header(s) the request lacks: {', '.join(absent)}.")

        amz_date = by_name["x-amz-date"][0]
        signed_at = self._check_date(amz_date, date)
        if "x-amz-content-sha256" in by_name and by_name["x-amz-content-sha256"][0] != hashlib.sha256(body).hexdigest():
            # The signer trusts this header as the body's hash, so it must be the body's hash.
            raise InvalidSignatureException("X-Amz-Content-SHA256 does not match the request body.")

        request = AWSRequest(method=method, url=f"http://signed-host{path}", data=body)
        for name in signed_names:  # only what the client signed, so nothing else changes the result
            for value in by_name[name]:
                request.headers[name] = value
        request.context["timestamp"] = amz_date
        signer = SigV4Auth(Credentials(key_id, secret), self.service, region)
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        if not hmac.compare_digest(expected, signature):
            raise InvalidSignatureException(
                "The request signature we calculated does not match the signature you provided. "
                "Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
            )
        return Signed(key_id, signature, signed_at.timestamp() + self.max_skew_s)

    def _check_date(self, amz_date: str, scope_date: str) -> datetime.datetime:
        try:
            signed_at = datetime.datetime.strptime(amz_date, SIGV4_TIMESTAMP).replace(tzinfo=datetime.timezone.utc)
        except ValueError:
            raise IncompleteSignature(f"X-Amz-Date must be in the form {SIGV4_TIMESTAMP}, got {amz_date!r}.") from None
        if scope_date != amz_date[:8]:
            raise InvalidSignatureException(
                f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
                f"'{scope_date}' != '{amz_date[:8]}', from '{amz_date}'."
            )
        now = datetime.datetime.fromtimestamp(self.clock(), datetime.timezone.utc)
        skew = datetime.timedelta(seconds=self.max_skew_s)
        minutes = f"{self.max_skew_s / 60:g} min."
        if signed_at < now - skew:
            raise InvalidSignatureException(
                f"Signature expired: {amz_date} is now earlier than {_stamp(now - skew)} ({_stamp(now)} - {minutes})"
            )
        if signed_at > now + skew:
            raise InvalidSignatureException(
                f"Signature not yet current: {amz_date} is still later than {_stamp(now + skew)} "
                f"({_stamp(now)} + {minutes})"
            )
        return signed_at


def sign(url: str, headers: Mapping[str, str], body: bytes, key_id: str, secret: str, region: str) -> dict[str, str]:
    """`headers` plus X-Amz-Date and the Authorization of a SigV4 signature over a POST to `url`."""
    request = AWSRequest(method="POST", url=url, data=body, headers=dict(headers))
    SigV4Auth(Credentials(key_id, secret), SERVICE, region).add_auth(request)
    return dict(request.headers.items())


def _parse_authorization(value: str) -> tuple[str, str, str, str, list[str], str]:
    """(access key id, scope date, region, service, signed header names, signature) from the header.

    The form is `AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/sagemaker/aws4_request,
    SignedHeaders=host;x-amz-date;x-amz-target, Signature=<64 hex digits>`.
    """
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise IncompleteSignature(f"Unsupported Authorization type: the agent accepts only {ALGORITHM}.")
    params: dict[str, str] = {}
    for part in rest.split(","):
        key, _, item = part.strip().partition("=")
        params[key] = item.strip()
    lacking = [key for key in ("Credential", "SignedHeaders", "Signature") if not params.get(key)]
    if lacking:
        raise IncompleteSignature(" ".join(f"Authorization header requires '{key}' parameter." for key in lacking))
    scope = params["Credential"].split("/")
    if len(scope) != 5:
        raise IncompleteSignature(
            "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term."
        )
    key_id, date, region, service, terminator = scope
    if terminator != SCOPE_TERMINATOR:
        raise InvalidSignatureException(
            f"Credential should be scoped with a valid terminator: '{SCOPE_TERMINATOR}', not '{terminator}'."
        )
    signed_names = [name.strip().lower() for name in params["SignedHeaders"].split(";") if name.strip()]
    return key_id, date, region, service, signed_names, params["Signature"]


def _stamp(moment: datetime.datetime) -> str:
    return moment.strftime(SIGV4_TIMESTAMP)
