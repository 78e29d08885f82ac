"""S3 credentials in their order, against real servers: AWS IoT's credentials provider (mTLS, in
this process), Greengrass's TES (loopback HTTP), and S3 itself (the moto server process)."""
from __future__ import annotations

import datetime
import json
import os
import ssl
import urllib.error
import urllib.request

import boto3
import botocore.exceptions
import pytest

from agent.config import AgentConfig, IotCoreConfig, S3Config, default_thing_name
from agent.demo.s3server import free_port
from agent.errors import ConfigError, ServerError, ValidationException
from agent.storage.credentials import (
    IOT_METHOD, TES_METHOD, IotCredentialsProvider, credential_source, role_alias_for, s3_client,
)
from tests.storage.credential_servers import GARBLED_ALIAS, IotCredentialsServer, now
from tests.transports.iot_fixtures import THING
from tests.waiting import wait_until

ALIAS = "neo-s3-role"
ROLE = "arn:aws:iam::123456789012:role/neo"
OTHER_ROLE = "arn:aws:iam::123456789012:role/other"


@pytest.fixture(autouse=True)
def no_ambient_credentials(monkeypatch, tmp_path):
    """Only what a test sets: no AWS_* or NEO_AGENT_* from the machine, no shared files, no IMDS."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "NEO_AGENT_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def iot_settings(server, pki, **overrides) -> S3Config:
    values = dict(iot_endpoint=server.endpoint, iot_role_alias=ALIAS, iot_thing_name=THING,
                  iot_cert=str(pki.client_cert), iot_key=str(pki.client_key), iot_ca=str(pki.ca))
    values.update(overrides)
    return S3Config(**values)


def signed_with(client, call) -> list[tuple[str, str | None]]:
    """(access key id, session token) of every request `call` sends through `client`."""
    seen = []

    def capture(request, **_):
        auth = request.headers.get("Authorization")
        auth = auth.decode() if isinstance(auth, bytes) else auth
        token = request.headers.get("X-Amz-Security-Token")
        token = token.decode() if isinstance(token, bytes) else token
        seen.append((auth.split("Credential=")[1].split("/")[0], token))

    client.meta.events.register("before-send.s3", capture)
    call()
    return seen


def failure_of(settings, role_arn=None) -> ServerError:
    with pytest.raises(ServerError) as caught:
        credential_source(settings, role_arn=role_arn)
    assert caught.value.keyword == "StorageCredentials"
    return caught.value


# --- the IoT credentials provider ---------------------------------------------------------------

def test_credentials_come_from_the_iot_provider(iot_server, pki):
    credentials = IotCredentialsProvider(iot_settings(iot_server, pki), ALIAS).load()
    issued = iot_server.issued[0]
    frozen = credentials.get_frozen_credentials()
    assert (frozen.access_key, frozen.secret_key, frozen.token) == (
        issued["accessKeyId"], issued["secretAccessKey"], issued["sessionToken"])
    assert credentials.method == IOT_METHOD
    assert iot_server.requests == [{"path": f"/role-aliases/{ALIAS}/credentials", "thing": THING,
                                    "certificate": THING, "alias": ALIAS}]


def test_the_provider_requires_a_client_certificate(iot_server, pki):
    """The stand-in refuses a TLS client without a certificate, so the test above proves ours sends one."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    request = urllib.request.Request(f"https://{iot_server.endpoint}/role-aliases/{ALIAS}/credentials",
                                     headers={"x-amzn-iot-thingname": THING})
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(request, context=context, timeout=10).read()
    # The server counts the refusal in its own thread, after its alert may have reached us.
    wait_until(lambda: iot_server.refused_handshakes == 1, timeout=10)
    assert iot_server.count == 0


def test_a_certificate_from_another_ca_is_a_storage_credentials_error(iot_server, pki):
    failure = failure_of(iot_settings(iot_server, pki, iot_cert=str(pki.stranger_cert), iot_key=str(pki.stranger_key)))
    assert failure.reason.startswith(f"ServerError: StorageCredentials: AWS IoT credentials provider "
                                     f"{iot_server.endpoint}, role alias {ALIAS}")
    assert iot_server.count == 0


def test_the_thing_name_header_must_be_the_certificates_thing(iot_server, pki):
    failure = failure_of(iot_settings(iot_server, pki, iot_thing_name="someone-else"))
    assert "HTTP 403: Access Denied" in failure.reason
    assert iot_server.requests[0]["thing"] == "someone-else"


def test_an_unknown_role_alias_is_403_naming_endpoint_and_alias(iot_server, pki):
    failure = failure_of(iot_settings(iot_server, pki, iot_role_alias="no-such-alias"))
    assert failure.reason == (f"ServerError: StorageCredentials: AWS IoT credentials provider {iot_server.endpoint}, "
                              "role alias no-such-alias answered HTTP 403: Access Denied")


def test_an_unreadable_answer_names_no_part_of_it(iot_server, pki):
    failure = failure_of(iot_settings(iot_server, pki, iot_role_alias=GARBLED_ALIAS))
    assert "answered HTTP 200 without readable credentials" in failure.reason
    assert "half-a-secret" not in failure.reason and failure.__cause__ is None


def test_a_server_the_ca_does_not_vouch_for_is_a_tls_failure(iot_server, pki):
    failure = failure_of(iot_settings(iot_server, pki, iot_ca=""))  # the system's CAs: not the test CA
    assert "TLS failed" in failure.reason and "CERTIFICATE_VERIFY_FAILED" in failure.reason


def test_an_unreachable_provider(pki):
    endpoint = f"127.0.0.1:{free_port()}"
    settings = S3Config(iot_endpoint=endpoint, iot_role_alias=ALIAS, iot_thing_name=THING,
                        iot_cert=str(pki.client_cert), iot_key=str(pki.client_key), iot_ca=str(pki.ca))
    assert f"{endpoint}, role alias {ALIAS} is unreachable (ConnectionRefusedError" in failure_of(settings).reason


def test_an_unreadable_certificate(iot_server, pki, tmp_path):
    (tmp_path / "bad.pem").write_text("not a certificate")
    failure = failure_of(iot_settings(iot_server, pki, iot_cert=str(tmp_path / "bad.pem")))
    assert "cannot load the thing's certificate" in failure.reason and iot_server.count == 0


@pytest.mark.parametrize("expires_in_s", [-60, 60])  # just expired; inside botocore's refresh window
def test_credentials_near_expiry_are_refreshed_on_next_use(iot_server, pki, expires_in_s):
    iot_server.expirations.append(now() + datetime.timedelta(seconds=expires_in_s))
    credentials = IotCredentialsProvider(iot_settings(iot_server, pki), ALIAS).load()
    assert iot_server.count == 1
    frozen = credentials.get_frozen_credentials()  # what botocore's signer asks for
    assert iot_server.count == 2
    assert frozen.access_key == iot_server.issued[1]["accessKeyId"]
    credentials.get_frozen_credentials()
    assert iot_server.count == 2, "fresh credentials (an hour left) are not fetched again"


def test_a_failed_refresh_inside_the_mandatory_window_is_raised(iot_server, pki):
    iot_server.expirations.append(now() + datetime.timedelta(seconds=60))
    credentials = IotCredentialsProvider(iot_settings(iot_server, pki), ALIAS).load()
    iot_server.aliases.discard(ALIAS)  # the role alias was deleted meanwhile
    with pytest.raises(ServerError, match="answered HTTP 403"):
        credentials.get_frozen_credentials()


# --- end to end: S3 through s3_client ------------------------------------------------------

def test_s3_round_trip_with_iot_credentials(s3_env, iot_server, pki):
    client = s3_client(iot_settings(iot_server, pki))
    fetched = []

    def round_trip():
        client.create_bucket(Bucket="iot-bucket")
        client.put_object(Bucket="iot-bucket", Key="model.onnx", Body=b"model bytes")
        fetched.append(client.get_object(Bucket="iot-bucket", Key="model.onnx")["Body"].read())

    seen = signed_with(client, round_trip)
    assert fetched == [b"model bytes"]
    issued = iot_server.issued[0]
    assert seen == [(issued["accessKeyId"], issued["sessionToken"])] * 3, "not the environment's keys"
    assert client.meta.config.retries["mode"] == "standard"
    assert iot_server.count == 1


def test_the_client_refreshes_before_expiry(s3_env, iot_server, pki):
    iot_server.expirations.append(now() + datetime.timedelta(seconds=60))
    client = s3_client(iot_settings(iot_server, pki))
    assert iot_server.count == 1
    seen = signed_with(client, lambda: [client.list_buckets() for _ in range(3)])
    assert iot_server.count == 2
    second = iot_server.issued[1]
    assert seen == [(second["accessKeyId"], second["sessionToken"])] * 3


# --- the order ---------------------------------------------------------------------------------

PROFILE = "edge"


@pytest.mark.parametrize("sources, source, key", [
    (("keys", "iot", "tes", "env"), "config", "AKIDFROMCONFIG"),
    (("profile", "iot", "tes", "env"), f"profile:{PROFILE}", "AKIDFROMPROFILE"),
    (("iot", "tes", "env"), IOT_METHOD, "ASIAIOT00002"),  # credential_source asked first: answer 1
    (("tes", "env"), TES_METHOD, "ASIATES00002"),
    (("env",), "env", "testing"),
    ((), "none", None),
])
def test_the_order(sources, source, key, s3_env, iot_server, tes_server, pki, monkeypatch, tmp_path):
    if "env" not in sources:
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    if "tes" in sources:
        monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", tes_server.uri)
        monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", tes_server.token)
    values = {}
    if "keys" in sources:
        values.update(access_key_id="AKIDFROMCONFIG", secret_access_key="config-secret")
    if "profile" in sources:
        shared = tmp_path / "credentials"
        shared.write_text(f"[{PROFILE}]\naws_access_key_id = AKIDFROMPROFILE\naws_secret_access_key = p-secret\n")
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(shared))
        values.update(profile=PROFILE)
    settings = iot_settings(iot_server, pki, **values) if "iot" in sources else S3Config(**values)

    assert credential_source(settings) == source
    if key is not None:
        client = s3_client(settings)
        assert [k for k, _ in signed_with(client, client.list_buckets)] == [key]
    assert (iot_server.count > 0) == (source == IOT_METHOD), "a source after the one that answers is never asked"
    assert (tes_server.count > 0) == (source == TES_METHOD)


def test_tes_sends_greengrass_token(s3_env, tes_server, monkeypatch):
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", tes_server.uri)
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", tes_server.token)
    client = s3_client(S3Config())
    assert signed_with(client, client.list_buckets) == [("ASIATES00001", "tes-token-1")]
    assert tes_server.requests == [{"path": "/2016-11-01/credentialprovider/", "authorization": tes_server.token}]


def test_a_failing_tes_is_an_error_not_a_fall_through(s3_env, tes_server, monkeypatch):
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", tes_server.uri)
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "a-stale-token")
    with pytest.raises(botocore.exceptions.CredentialRetrievalError, match="401"):
        credential_source(S3Config())  # the environment's keys are there, and not used


def test_a_profile_that_is_not_there(monkeypatch):
    with pytest.raises(ServerError, match="s3.profile 'nowhere' is not in the shared AWS files"):
        s3_client(S3Config(profile="nowhere"))


def test_a_profile_without_credentials(monkeypatch, tmp_path):
    (tmp_path / "config").write_text(f"[profile {PROFILE}]\nregion = eu-west-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDENV")  # not a fallback for a profile that was asked for
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    with pytest.raises(ServerError, match=f"s3.profile '{PROFILE}' has no credentials"):
        credential_source(S3Config(profile=PROFILE))


def test_boto3s_environment_works_as_with_a_plain_session(pki, monkeypatch):
    """Endpoint, region and CA bundle come from boto3's own variables; here over real TLS."""
    server = IotCredentialsServer(pki, client_certificate=False).start()  # any HTTPS server with the test CA
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"https://{server.endpoint}")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDENV")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
        ours, plain = s3_client(S3Config()), boto3.session.Session().client("s3")
        assert (ours.meta.endpoint_url, ours.meta.region_name) == (plain.meta.endpoint_url, plain.meta.region_name)
        assert ours.meta.region_name == "eu-west-3" and credential_source(S3Config()) == "env"
        with pytest.raises(botocore.exceptions.SSLError):  # the system's CAs do not know the test CA
            ours.list_buckets()
        monkeypatch.setenv("AWS_CA_BUNDLE", str(pki.ca))
        with pytest.raises(botocore.exceptions.ClientError) as caught:  # TLS passed; the stand-in is no S3
            s3_client(S3Config()).list_buckets()
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    finally:
        server.stop()


@pytest.mark.parametrize("environment, profile_region, region", [
    ({"AWS_REGION": "eu-central-1"}, None, "eu-central-1"),  # botocore alone would say us-east-1
    ({"AWS_REGION": "eu-central-1", "AWS_DEFAULT_REGION": "eu-west-3"}, None, "eu-west-3"),
    ({"AWS_REGION": "eu-central-1"}, "ap-south-1", "eu-central-1"),  # the environment over the file
    ({}, "ap-south-1", "ap-south-1"),
    ({}, None, "us-east-1"),
])
def test_aws_region_sets_the_region_where_aws_default_region_does_not(environment, profile_region, region,
                                                                      monkeypatch, tmp_path):
    from agent.storage.s3 import default_client

    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    if profile_region:
        (tmp_path / "no-config").write_text(f"[default]\nregion = {profile_region}\n")
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert s3_client(S3Config()).meta.region_name == region, "the job's client (agent.storage.credentials)"
    assert default_client().meta.region_name == region, "the client a transfer makes without one"


# --- role aliases --------------------------------------------------------------------------------

def test_role_alias_without_a_map_is_the_devices_alias():
    settings = S3Config(iot_role_alias=ALIAS)
    assert role_alias_for(settings, ROLE) == ALIAS
    assert role_alias_for(settings, OTHER_ROLE) == ALIAS
    assert role_alias_for(settings, None) == ALIAS


def test_role_alias_from_the_map():
    settings = S3Config(role_aliases={ROLE: "neo-role-alias", OTHER_ROLE: "other-alias"})
    assert role_alias_for(settings, ROLE) == "neo-role-alias"
    assert role_alias_for(settings, OTHER_ROLE) == "other-alias"
    with pytest.raises(ValidationException) as caught:
        role_alias_for(settings, "arn:aws:iam::123456789012:role/stranger")
    assert caught.value.message == (
        "RoleArn arn:aws:iam::123456789012:role/stranger cannot be used on this device: it holds AWS IoT "
        f"role aliases only for the role ARNs {ROLE}, {OTHER_ROLE}.")
    with pytest.raises(ValidationException, match="A RoleArn is required"):
        role_alias_for(settings, None)
    assert role_alias_for(S3Config(iot_role_alias=ALIAS, role_aliases={ROLE: "x"}), None) == ALIAS


def test_the_jobs_role_picks_the_alias_it_asks_for(iot_server, pki):
    iot_server.aliases.add("other-alias")
    settings = iot_settings(iot_server, pki, iot_role_alias="", role_aliases={ROLE: ALIAS, OTHER_ROLE: "other-alias"})
    assert credential_source(settings, role_arn=OTHER_ROLE) == IOT_METHOD
    assert iot_server.requests[-1]["alias"] == "other-alias"
    failure = failure_of(settings, role_arn="arn:aws:iam::123456789012:role/stranger")
    assert "cannot be used on this device" in failure.reason


# --- configuration -------------------------------------------------------------------------------

def make_config(tmp_path, **s3) -> AgentConfig:
    return AgentConfig(state_dir=tmp_path / "state", s3=S3Config(**s3))


@pytest.mark.parametrize("s3, message", [
    ({"secret_access_key": "s3cr3t"}, "s3.access_key_id: s3.access_key_id and s3.secret_access_key go together"),
    ({"access_key_id": "AKID"}, "s3.secret_access_key: s3.access_key_id and s3.secret_access_key go together"),
    ({"session_token": "t0ken"}, "s3.session_token: given without s3.access_key_id"),
    ({"access_key_id": "AKID", "secret_access_key": "s3cr3t", "profile": "p"}, "s3.profile: give either"),
    ({"iot_role_alias": ALIAS}, "s3.iot_endpoint: required when s3.iot_role_alias or s3.role_aliases is set"),
    ({"role_aliases": {ROLE: ALIAS}}, "s3.iot_endpoint: required when"),
    ({"iot_endpoint": "x.credentials.iot.eu-west-1.amazonaws.com"}, "s3.iot_role_alias: required when s3.iot_endpoint"),
    ({"iot_endpoint": "https://x/", "iot_role_alias": ALIAS}, "s3.iot_endpoint: a host name"),
    ({"iot_endpoint": "x", "iot_role_alias": ALIAS}, "s3.iot_cert: required when s3.iot_endpoint is set"),
    ({"iot_endpoint": "x", "iot_role_alias": ALIAS, "iot_cert": "/no/cert.pem", "iot_key": "/no/key.pem"},
     "s3.iot_cert: no such file: /no/cert.pem"),
    ({"iot_endpoint": "x", "iot_role_alias": "bad alias!"}, "s3.iot_role_alias: 'bad alias!' is not a role alias"),
    ({"iot_endpoint": "x", "role_aliases": {"neo": ALIAS}}, "s3.role_aliases: 'neo' is not an IAM role ARN"),
])
def test_configuration_errors_name_the_key(tmp_path, s3, message):
    with pytest.raises(ConfigError) as caught:
        make_config(tmp_path, **s3)
    assert message in str(caught.value)
    assert "s3cr3t" not in str(caught.value) and "t0ken" not in str(caught.value)


def test_the_thing_and_its_certificate_come_from_the_iotcore_section(tmp_path, pki):
    iotcore = IotCoreConfig(endpoint="iot.example", thing_name=THING, cert=str(pki.client_cert),
                            key=str(pki.client_key), ca=str(pki.ca))
    config = AgentConfig(state_dir=tmp_path, iotcore=iotcore, s3=S3Config(iot_endpoint="creds.example",
                                                                          iot_role_alias=ALIAS))
    s3 = config.s3
    assert (s3.iot_thing_name, s3.iot_cert, s3.iot_key, s3.iot_ca) == (THING, str(pki.client_cert),
                                                                       str(pki.client_key), str(pki.ca))
    assert make_config(tmp_path).s3.iot_thing_name == default_thing_name()


def test_the_environment(tmp_path, pki, monkeypatch):
    monkeypatch.setenv("NEO_AGENT_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("NEO_AGENT_S3_IOT_ENDPOINT", "creds.example:8443")
    monkeypatch.setenv("NEO_AGENT_S3_IOT_CERT", str(pki.client_cert))
    monkeypatch.setenv("NEO_AGENT_S3_IOT_KEY", str(pki.client_key))
    monkeypatch.setenv("NEO_AGENT_S3_ROLE_ALIASES",
                       f"{ROLE}=neo-alias, arn:aws:iam::123456789012:role/a,b=c=alias-2")  # role names may hold , and =
    s3 = AgentConfig.load().s3
    assert s3.role_aliases == {ROLE: "neo-alias", "arn:aws:iam::123456789012:role/a,b=c": "alias-2"}
    assert s3.iot_endpoint == "creds.example:8443" and s3.iot_enabled
    monkeypatch.setenv("NEO_AGENT_S3_ROLE_ALIASES", f"{ROLE}=ok,arn:aws:iam::123456789012:role/none")
    with pytest.raises(ConfigError, match=r"NEO_AGENT_S3_ROLE_ALIASES: .*\(entry 2 is not ROLE_ARN=ROLE_ALIAS\)"):
        AgentConfig.load()


def test_secrets_stay_out_of_the_childs_spec(tmp_path):
    config = make_config(tmp_path, access_key_id="AKIDCONFIG", secret_access_key="s3cr3t", session_token="t0ken")
    spec = json.dumps(config.to_child())
    assert "s3cr3t" not in spec and "t0ken" not in spec and "AKIDCONFIG" in spec
    assert "s3cr3t" not in repr(config) and "t0ken" not in repr(config)
    environment = config.child_environment()
    assert environment == {"NEO_AGENT_S3_SECRET_ACCESS_KEY": "s3cr3t", "NEO_AGENT_S3_SESSION_TOKEN": "t0ken"}
    rebuilt = AgentConfig.from_child(json.loads(spec), environment)
    assert rebuilt.s3 == config.s3
    assert AgentConfig.from_child(json.loads(json.dumps(make_config(tmp_path).to_child())), {}).s3 == S3Config(
        iot_thing_name=default_thing_name())


# --- a real job ---------------------------------------------------------------------------------

def test_a_jobs_compile_child_uploads_with_the_iot_providers_credentials(s3_env, iot_server, pki, tmp_path):
    """Runner -> child process -> upload stage: the child asks the provider with the thing's
    certificate and signs its S3 requests with what it got (moto takes any keys, the count
    on the provider shows who asked)."""
    import boto3

    from agent.config import AgentConfig
    from agent.jobs.job import Status
    from agent.jobs.store import JobStore
    from agent.runner.runner import Runner
    from tests.runner.conftest import make_config, scripted_job, submit, wait_terminal

    boto3.client("s3").create_bucket(Bucket="iot-job-bucket")
    config: AgentConfig = make_config(tmp_path, s3=iot_settings(iot_server, pki))
    store = JobStore(config.db_path)
    runner = Runner(store, config)
    runner.start()
    try:
        job = scripted_job("iot-creds", "publish=0.1")
        job.request["OutputConfig"]["S3OutputLocation"] = "s3://iot-job-bucket/out"
        submit(store, runner, job)
        done = wait_terminal(store, "iot-creds", timeout=60)
    finally:
        runner.shutdown(timeout=10)
        store.close()
    assert done.status == Status.COMPLETED, done.failure_reason
    assert iot_server.count == 1, "the child fetched the credentials once, from the provider"
    assert boto3.client("s3").head_object(Bucket="iot-job-bucket", Key="out/scripted-ml_c5.tar.gz")
