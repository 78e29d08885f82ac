"""The credentials a device really has, for S3, looked for in a fixed order.

    1. this agent's configuration: s3.access_key_id + s3.secret_access_key [+ s3.session_token],
       or s3.profile, a named profile of the shared AWS files (~/.aws/credentials, ~/.aws/config)
    2. the AWS IoT credentials provider (on when s3.iot_endpoint is set): the thing's certificate
       buys temporary credentials for the IAM role behind a role alias, over mutual TLS
    3. Greengrass's Token Exchange Service: AWS_CONTAINER_CREDENTIALS_FULL_URI and
       AWS_CONTAINER_AUTHORIZATION_TOKEN, which Greengrass sets for its components
    4. boto3's default chain: the environment, the shared files, ECS, IMDS, ...

Why this order: what the operator wrote down for this agent is the most deliberate choice; the
thing's own certificate is the device's identity, the one credential every IoT device has; TES
is Greengrass handing out that same identity; boto3's chain is what is left. The first source
that is configured answers, and a configured source that fails is an error rather than a reason
to try the next: a device whose certificate was revoked should say so, not quietly use whatever
role the environment happens to hold.

Temporary credentials refresh themselves: botocore's RefreshableCredentials fetches new ones
when fewer than 15 minutes remain (advisory; at 10 minutes every caller waits for them).

    s3_client(settings, role_arn=...)          a boto3 S3 client whose credentials follow the order
    credential_source(settings, role_arn=...)  which source answers: "config", "profile:NAME",
                                               "iot-credentials-provider", "greengrass-tes", or
                                               botocore's method name ("env", ...); "none"
    role_alias_for(settings, role_arn)         the role alias a job's RoleArn maps to

The session is an ordinary botocore session with only its credential resolver replaced, so
boto3's environment (AWS_ENDPOINT_URL_S3, AWS_DEFAULT_REGION, AWS_CA_BUNDLE, ...) works exactly
as with a plain boto3 session. The differences: the order (with TES set up, TES answers before
the AWS_ACCESS_KEY_ID variables), and AWS_REGION, which botocore ignores, sets the region when
AWS_DEFAULT_REGION does not (agent.storage.s3.environment_region, as for its default client).

Errors: the IoT provider's failures (an HTTP error such as 403, an unreadable answer, TLS,
an unreachable endpoint) and an unusable s3.profile are ServerError("StorageCredentials", ...),
naming the endpoint, the role alias and the HTTP status, never a secret. TES and the default
chain fail with botocore's own errors, which agent.storage translates as it does any other.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import logging
import ssl
import urllib.parse
from typing import TYPE_CHECKING, Any, Iterator

from botocore.credentials import (
    ContainerProvider, CredentialProvider, CredentialResolver, Credentials, RefreshableCredentials,
)
from dateutil.parser import parse as parse_time  # what RefreshableCredentials parses expiry with

from agent.config import AgentConfig, S3Config, default_thing_name
from agent.errors import ServerError, ValidationException
from agent.storage.s3 import environment_region

if TYPE_CHECKING:
    from botocore.config import Config

log = logging.getLogger(__name__)

KEYWORD = "StorageCredentials"
CONFIG_METHOD = "config"
IOT_METHOD = "iot-credentials-provider"
TES_METHOD = "greengrass-tes"
NO_CREDENTIALS = "none"
THING_NAME_HEADER = "x-amzn-iot-thingname"
IOT_TIMEOUT_S = 10.0  # connect and read, per request to the IoT credentials provider
MAX_ANSWER_BYTES = 64 * 1024  # an answer is a few hundred bytes; anything far larger is not one
MAX_MESSAGE_CHARS = 200  # of an error answer's message, in our own error
USER_AGENT = "neo-edge-agent"
# botocore's default-chain sources that do not come from a named profile; everything else in a
# profile-bound session's chain (its keys, assume-role, SSO, credential_process) does.
NOT_FROM_PROFILE = {"env", "ec2-credentials-file", "boto-config", "container-role", "iam-role"}


def s3_client(settings: S3Config | None = None, *, role_arn: str | None = None, config: "Config | None" = None):
    """A boto3 S3 client (fresh session, retries mode "standard") whose credentials come from the
    order above. `settings` defaults to AgentConfig.load().s3; `role_arn` is the job's RoleArn,
    which picks the IoT role alias; `config` is merged over the retry setting (timeouts, ...)."""
    import boto3
    from botocore.config import Config

    settings = AgentConfig.load().s3 if settings is None else settings
    client_config = Config(retries={"mode": "standard"})
    if config is not None:
        client_config = client_config.merge(config)
    session = boto3.session.Session(botocore_session=_botocore_session(settings, role_arn))
    with _profile_errors(settings):
        return session.client("s3", config=client_config)


def credential_source(settings: S3Config | None = None, *, role_arn: str | None = None) -> str:
    """Which source answers, as a short name for logs and metrics; never a secret.

    This resolves the credentials, so the IoT provider or TES is asked once.
    """
    settings = AgentConfig.load().s3 if settings is None else settings
    session = _botocore_session(settings, role_arn)
    with _profile_errors(settings):
        credentials = session.get_credentials()
    return credentials.method if credentials is not None else NO_CREDENTIALS


def role_alias_for(settings: S3Config, role_arn: str | None) -> str:
    """The IoT role alias to use for a job's RoleArn.

    With s3.role_aliases, the RoleArn must be one of its keys: the device may act only as the
    roles it was given aliases for. Without, every job gets s3.iot_role_alias and its RoleArn is
    only recorded (a device cannot assume an arbitrary role; its alias decides).
    """
    if not settings.role_aliases:
        log.debug("RoleArn %s: IoT role alias %s (s3.role_aliases is empty)", role_arn, settings.iot_role_alias)
        return settings.iot_role_alias
    if role_arn is None and settings.iot_role_alias:
        return settings.iot_role_alias  # not a job's request: the device's own alias
    if role_arn in settings.role_aliases:
        return settings.role_aliases[role_arn]
    allowed = ", ".join(sorted(settings.role_aliases))
    which = f"RoleArn {role_arn} cannot be used" if role_arn else "A RoleArn is required"
    raise ValidationException(
        f"{which} on this device: it holds AWS IoT role aliases only for the role ARNs {allowed}."
    )


# --- the resolver ------------------------------------------------------------------------------

def _botocore_session(settings: S3Config, role_arn: str | None):
    """A botocore session whose credential resolver has exactly the order above."""
    import botocore.session

    session = botocore.session.Session(profile=settings.profile or None)
    region = environment_region()
    if region:
        session.set_config_variable("region", region)
    with _profile_errors(settings):
        default = session.get_component("credential_provider").providers
    if settings.profile:
        profile = [p for p in default if p.METHOD not in NOT_FROM_PROFILE]
        default = [p for p in default if p.METHOD in NOT_FROM_PROFILE]
    providers: list[CredentialProvider] = [ConfiguredKeys(settings)]
    if settings.profile:
        providers.append(NamedProfile(settings.profile, profile))
    if settings.iot_enabled:
        try:
            alias = role_alias_for(settings, role_arn)
        except ValidationException as exc:  # the configuration changed since the job was accepted
            raise ServerError(KEYWORD, exc.message) from exc
        providers.append(IotCredentialsProvider(settings, alias))
    providers.append(GreengrassTes())
    providers.extend(default)
    session.register_component("credential_provider", CredentialResolver(providers=providers))
    return session


@contextlib.contextmanager
def _profile_errors(settings: S3Config) -> Iterator[None]:
    """botocore's ProfileNotFound, raised wherever the profile is first read, in our words."""
    from botocore.exceptions import ProfileNotFound

    try:
        yield
    except ProfileNotFound as exc:
        raise ServerError(KEYWORD, f"s3.profile {settings.profile!r} is not in the shared AWS files "
                                   "(~/.aws/config, ~/.aws/credentials)") from exc


class ConfiguredKeys(CredentialProvider):
    """s3.access_key_id and s3.secret_access_key [+ s3.session_token]."""

    METHOD = CONFIG_METHOD

    def __init__(self, settings: S3Config):
        self.settings = settings

    def load(self) -> Credentials | None:
        s = self.settings
        if not s.access_key_id:
            return None
        return Credentials(s.access_key_id, s.secret_access_key, s.session_token or None, method=self.METHOD)


class NamedProfile(CredentialProvider):
    """s3.profile: that profile's own sources only, never the rest of boto3's chain."""

    METHOD = "profile"

    def __init__(self, name: str, providers: list[CredentialProvider]):
        self.name = name
        self.providers = providers

    def load(self) -> Credentials:
        for provider in self.providers:
            credentials = provider.load()
            if credentials is not None:
                credentials.method = f"profile:{self.name}"
                return credentials
        raise ServerError(KEYWORD, f"s3.profile {self.name!r} has no credentials in the shared AWS files")


class GreengrassTes(ContainerProvider):
    """Greengrass's Token Exchange Service: a full URI and an authorization token.

    botocore's ContainerProvider speaks its protocol; this one answers only to the full URI
    (ECS's relative URI stays with the default chain) and names itself for credential_source.
    """

    METHOD = TES_METHOD
    CANONICAL_NAME = None

    def load(self):
        if self.ENV_VAR_FULL in self._environ and self.ENV_VAR not in self._environ:
            return super().load()
        return None


class IotCredentialsProvider(CredentialProvider):
    """AWS IoT's credentials provider: GET /role-aliases/{alias}/credentials over mutual TLS.

    The thing's certificate is read again for every fetch, so a rotated certificate is used
    from the next refresh on.
    """

    METHOD = IOT_METHOD

    def __init__(self, settings: S3Config, role_alias: str):
        self.settings = settings
        self.role_alias = role_alias
        self.thing_name = settings.iot_thing_name or default_thing_name()
        self.where = f"AWS IoT credentials provider {settings.iot_endpoint}, role alias {role_alias}"

    def load(self) -> RefreshableCredentials:
        return RefreshableCredentials.create_from_metadata(
            metadata=self.fetch(), refresh_using=self.fetch, method=self.METHOD)

    def fetch(self) -> dict[str, Any]:
        """One request; botocore's metadata (access_key, secret_key, token, expiry_time)."""
        status, body = self._get()
        if status != 200:
            raise ServerError(KEYWORD, f"{self.where} answered HTTP {status}: {_error_message(body)}")
        try:
            answer = json.loads(body)
            credentials = answer["credentials"]
            metadata = {
                "access_key": credentials["accessKeyId"],
                "secret_key": credentials["secretAccessKey"],
                "token": credentials["sessionToken"],
                "expiry_time": credentials["expiration"],
            }
            if not all(isinstance(value, str) and value for value in metadata.values()):
                raise ValueError("empty or not text")
            parse_time(metadata["expiry_time"])  # fail here, not in the middle of a signed request
        except (ValueError, KeyError, TypeError, OverflowError) as exc:
            # Never the body itself: a half-readable answer may still hold a secret.
            raise ServerError(KEYWORD, f"{self.where} answered HTTP 200 without readable credentials "
                                       f"({type(exc).__name__})") from None
        log.info("temporary credentials from %s, thing %s, until %s",
                 self.where, self.thing_name, metadata["expiry_time"])
        return metadata

    def _get(self) -> tuple[int, bytes]:
        s = self.settings
        try:
            context = ssl.create_default_context(cafile=s.iot_ca or None)
            context.load_cert_chain(s.iot_cert, s.iot_key)
        except (OSError, ssl.SSLError) as exc:
            raise ServerError(KEYWORD, f"{self.where}: cannot load the thing's certificate {s.iot_cert} "
                                       f"and key {s.iot_key}, or the CA {s.iot_ca or '(system)'}: "
                                       f"{getattr(exc, 'strerror', None) or exc}") from exc
        path = f"/role-aliases/{urllib.parse.quote(self.role_alias, safe='')}/credentials"
        headers = {THING_NAME_HEADER: self.thing_name, "Accept": "application/json", "User-Agent": USER_AGENT}
        connection = http.client.HTTPSConnection(s.iot_endpoint, context=context, timeout=IOT_TIMEOUT_S)
        try:
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            return response.status, response.read(MAX_ANSWER_BYTES)
        except ssl.SSLError as exc:
            raise ServerError(KEYWORD, f"{self.where}: TLS failed ({exc.reason or exc})") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise ServerError(KEYWORD, f"{self.where} is unreachable ({type(exc).__name__}: {exc})") from exc
        finally:
            connection.close()


def _error_message(body: bytes) -> str:
    """The "message" of an error answer ({"message": "Access Denied"}), short; else nothing of it."""
    try:
        message = json.loads(body).get("message")
    except (ValueError, AttributeError):
        return "(no readable message)"
    return str(message)[:MAX_MESSAGE_CHARS] if message else "(no message)"
