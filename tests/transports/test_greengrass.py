"""The Greengrass transport: Neo's API and AWS IoT Jobs through the nucleus's IPC, and the component's life.

The Greengrass nucleus itself cannot run here: it is a Java program that needs a thing
registered in AWS IoT, the thing's certificate, and AWS (IoT Core, the Token Exchange Service,
deployments). So the agent gets a stand-in for awsiotsdk's GreengrassCoreIPCClientV2
(tests/transports/greengrass_nucleus.py): the real client's method names and signatures (checked
below against the installed awsiotsdk with inspect), awsiotsdk's own model types, stream callbacks
on a thread pool, and behind it a fake nucleus that authorizes every topic against
greengrass/recipe.yaml's accessControl as the real nucleus does. IoT Core is a list in this
process, or, for IoT Jobs, a real Mosquitto broker with the Jobs stand-in on it
(tests/iotjobs_service.py). The agent runs the scripted pipeline (tests/runner/scripted_pipeline.py).
"""
from __future__ import annotations

import inspect
import json
import logging
import re
import time
import uuid
from pathlib import Path

import pytest
import yaml
from awsiot.greengrasscoreipc import model
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

from agent.config import CHANNELS, IotCoreConfig
from agent.errors import ConfigError
from agent.jobs.events import Event
from agent.service.agent import Agent
from agent.service.daemon import build_transports
from agent.transports import greengrass, greengrass_ipc, topics
from agent.transports.greengrass import greengrass_transports
from agent.transports.greengrass_ipc import (
    SOCKET_ENV, TOKEN_ENV, IpcConnection, IpcRefused, IpcUnavailable, PublishFailed, translate,
    under_greengrass,
)
from agent.transports.iotjobs import compilation_job_name
from tests.iotjobs_service import JobsService
from tests.mosquitto import mosquitto, mosquitto_binary  # noqa: F401 (a fixture)
from tests.runner.conftest import make_config, scripted_job
from tests.transports.greengrass_nucleus import (
    STANDIN_METHODS, BrokerCloud, CloudMessage, FakeNucleus, StandInClient,
)
from tests.waiting import wait_until

RECIPE = Path(__file__).resolve().parents[2] / "greengrass" / "recipe.yaml"
THING = "gg-core-1"
WAIT_S = 30.0
GREENGRASS_ENV = {SOCKET_ENV: "/greengrass/v2/ipc.socket", TOKEN_ENV: "svcuid-token", greengrass.THING_ENV: THING}


@pytest.fixture
def recipe() -> dict:
    return yaml.safe_load(RECIPE.read_text())


@pytest.fixture
def serve(tmp_path, recipe):
    """serve(jobs=False, cloud=None, **nucleus options) -> (agent, nucleus, transports), started."""
    running = []

    def start(jobs: bool = False, cloud=None, recipe_changes=None, **options):
        nucleus = FakeNucleus(recipe_changes(recipe) if recipe_changes else recipe, THING, cloud, **options)
        agent = Agent(make_config(tmp_path / f"agent-{len(running)}", iotcore=IotCoreConfig(jobs=jobs),
                                  file_uri_channels=CHANNELS))  # the scripted requests name file:// locations
        transports = greengrass_transports(agent, environ={greengrass.THING_ENV: THING},
                                           client_factory=nucleus.client)
        agent.start()
        running.append((agent, nucleus, transports))
        for transport in transports:
            transport.start()
        return agent, nucleus, transports

    yield start
    for agent, nucleus, transports in reversed(running):
        for transport in reversed(transports):
            transport.stop(5)
        agent.shutdown()
        nucleus.shutdown()


def request(nucleus: FakeNucleus, operation: str, body: dict, **properties) -> tuple[CloudMessage, dict]:
    """A client's request through IoT Core, and the agent's answer on accepted/rejected or its Response Topic."""
    token = uuid.uuid4().hex
    nucleus.cloud.send(CloudMessage(topics.request_topic(THING, operation),
                                    json.dumps({**body, "clientToken": token}).encode(), **properties))
    answer = nucleus.cloud.wait(lambda m: json.loads(m.payload or b"{}").get("clientToken") == token)
    return answer, json.loads(answer.payload)


def events_of(nucleus: FakeNucleus, job: str) -> list[dict]:
    return [json.loads(m.payload) for m in nucleus.cloud.published if m.topic == topics.events_topic(THING, job)]


# --- the stand-in is the real client's interface --------------------------------------------------
@pytest.mark.parametrize("name", STANDIN_METHODS)
def test_the_stand_in_has_the_real_clients_signatures(name):
    def shape(function):
        return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]

    assert shape(getattr(StandInClient, name)) == shape(getattr(GreengrassCoreIPCClientV2, name))


def test_the_agent_calls_only_what_the_stand_in_has():
    """Every IPC client method the agent's Greengrass modules call is one the stand-in implements."""
    sources = "".join(Path(module.__file__).read_text() for module in (greengrass, greengrass_ipc))
    real = {name for name in dir(GreengrassCoreIPCClientV2) if not name.startswith("_")}
    called = {name for name in re.findall(r"client\.(\w+)", sources) if name in real}
    assert called and called <= set(STANDIN_METHODS), called - set(STANDIN_METHODS)


# --- requests in, answers and events out ----------------------------------------------------------
def test_a_request_is_answered_on_its_topic_and_a_jobs_events_follow(serve):
    agent, nucleus, _ = serve()
    assert set(nucleus.subscriptions()) == set(topics.request_topics(THING))
    answer, body = request(nucleus, "ListCompilationJobs", {})
    assert answer.topic == topics.accepted_topic(THING, "ListCompilationJobs")
    assert body["CompilationJobSummaries"] == []
    job = scripted_job("gg-1", "stage=compile")
    answer, body = request(nucleus, "CreateCompilationJob", job.request)
    assert body["CompilationJobArn"].endswith(":compilation-job/gg-1")
    nucleus.cloud.wait(lambda m: m.topic == topics.events_topic(THING, "gg-1")
                       and json.loads(m.payload)["status"] == "COMPLETED")
    statuses = [e["status"] for e in events_of(nucleus, "gg-1") if e["kind"] == "status"]
    assert statuses == ["STARTING", "INPROGRESS", "COMPLETED"]
    seqs = [e["seq"] for e in events_of(nucleus, "gg-1")]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert agent.store.get("gg-1").channel == "greengrass"
    assert nucleus.refused == []


def test_api_errors_go_to_rejected_in_sagemaker_words(serve):
    _, nucleus, _ = serve()
    answer, body = request(nucleus, "DescribeCompilationJob", {"CompilationJobName": "nope"})
    assert answer.topic == topics.rejected_topic(THING, "DescribeCompilationJob")
    assert body["error"]["code"] == "ResourceNotFound"


def test_an_mqtt5_response_topic_under_the_thing_gets_the_answer_with_its_correlation_data(serve):
    _, nucleus, _ = serve()
    reply_to = topics.client_response_topic(THING, "cli-1")
    answer, body = request(nucleus, "ListCompilationJobs", {}, response_topic=reply_to, correlation_data=b"corr-7")
    assert answer.topic == reply_to and answer.correlation_data == b"corr-7"
    assert body["CompilationJobSummaries"] == []


def test_a_response_topic_the_component_may_not_publish_to_gets_the_answer_on_accepted(serve, caplog):
    _, nucleus, _ = serve()
    with caplog.at_level(logging.WARNING, logger="agent.transports.greengrass"):
        answer, _ = request(nucleus, "ListCompilationJobs", {}, response_topic="replies/elsewhere")
    assert answer.topic == topics.accepted_topic(THING, "ListCompilationJobs")
    assert nucleus.refused == []  # it did not even try the topic the nucleus would refuse
    assert "replies/elsewhere" in caplog.text


def test_a_status_the_nucleus_could_not_take_is_offered_again(serve, monkeypatch):
    monkeypatch.setattr(greengrass, "RESEND_S", 0.2)
    agent, nucleus, _ = serve()
    nucleus.fail_publishes = 1000  # the nucleus's spooler is full
    agent.api_for(greengrass.NAME).call("CreateCompilationJob", scripted_job("gg-resend", "stage=compile").request)
    wait_until(lambda: agent.store.get("gg-resend").status.terminal, WAIT_S)
    assert events_of(nucleus, "gg-resend") == []
    nucleus.fail_publishes = 0  # room again: the outbox's entries follow, in order
    wait_until(lambda: len([e for e in events_of(nucleus, "gg-resend") if e["kind"] == "status"]) == 3, WAIT_S)
    assert [e["status"] for e in events_of(nucleus, "gg-resend")] == ["STARTING", "INPROGRESS", "COMPLETED"]


# --- the component's life: state, metrics, configuration ------------------------------------------
def test_running_is_reported_once_serving_and_errored_when_the_nucleus_closes_a_stream(serve):
    _, nucleus, _ = serve()
    nucleus.wait_for_state("RUNNING")
    assert nucleus.states == ["RUNNING"]
    nucleus.close_streams()
    nucleus.wait_for_state("ERRORED")
    time.sleep(0.3)  # every stream's close has reached the agent
    assert nucleus.states == ["RUNNING", "ERRORED"]  # once: the nucleus restarts the whole component


def test_stop_closes_the_streams_and_the_connection(serve):
    _, nucleus, transports = serve()
    transports[0].stop(5)
    assert nucleus.subscriptions() == [] and all(client.closed for client in nucleus.clients)
    assert nucleus.states == ["RUNNING"]  # an orderly stop is no error
    transports[0].stop(5)  # twice is fine


def test_each_jobs_end_puts_component_metrics(serve):
    agent, nucleus, _ = serve(metrics_for_aws_only=False)
    request(nucleus, "CreateCompilationJob", scripted_job("gg-ok", "stage=compile").request)
    request(nucleus, "CreateCompilationJob", scripted_job("gg-bad", "fail=broken").request)
    wait_until(lambda: len(nucleus.metrics) == 2, WAIT_S)
    agent.events.publish(Event(kind="status", job_name="x", status="COMPLETED", metrics={"compile_seconds": 12.5}))
    wait_until(lambda: len(nucleus.metrics) == 3, WAIT_S)
    ok, bad, timed = ({m.name: (m.value, m.unit) for m in metrics} for metrics in nucleus.metrics)
    assert ok["JobsCompleted"] == (1.0, "COUNT") and ok["QueueDepth"][1] == "COUNT"
    assert bad == {"JobsFailed": (1.0, "COUNT"), "QueueDepth": (0.0, "COUNT")}
    assert timed["CompileSeconds"] == (12.5, "SECONDS")
    assert all(set(sent) <= set(greengrass.METRICS) for sent in (ok, bad, timed))


def test_the_nucleus_refuses_metrics_to_a_component_not_named_aws_and_the_agent_stops_asking(serve, caplog):
    agent, nucleus, _ = serve()  # the real nucleus's rule
    with caplog.at_level(logging.WARNING, logger="agent.transports.greengrass"):
        agent.events.publish(Event(kind="status", job_name="x", status="FAILED"))
        wait_until(lambda: nucleus.metric_calls == 1, WAIT_S)
        wait_until(lambda: "no more will be sent" in caplog.text, WAIT_S)
        agent.events.publish(Event(kind="status", job_name="y", status="FAILED"))
        request(nucleus, "ListCompilationJobs", {})  # the dispatch thread has moved past the second event
    assert nucleus.metric_calls == 1 and nucleus.metrics == []


def test_a_deployments_configuration_is_accepted_or_rejected_naming_the_key(serve, recipe):
    _, nucleus, _ = serve()
    defaults = recipe["ComponentConfiguration"]["DefaultConfiguration"]

    def propose(section: str, key: str, value) -> model.ConfigurationValidityReport:
        changed = json.loads(json.dumps(defaults))
        changed.setdefault(section, {})[key] = value
        return nucleus.propose(changed, deployment_id=f"d-{uuid.uuid4().hex[:6]}")

    accepted = nucleus.propose(defaults, deployment_id="d-defaults")
    assert accepted.status == model.ConfigurationValidityStatus.ACCEPTED
    assert propose("agent", "queue_limit", "250").status == model.ConfigurationValidityStatus.ACCEPTED
    assert propose("tuning", "default_seconds", "0").status == model.ConfigurationValidityStatus.ACCEPTED
    for section, key, value, words in [
        ("bench", "threads", "many", "bench.threads: expected an integer"),
        ("agent", "queue_limt", "5", "agent.queue_limt: unknown key; did you mean agent.queue_limit?"),
        ("agent", "queue_limit", 100.0, "agent.queue_limit: give integers as strings"),
        ("agent", "queue_limit", "0", "queue_limit: must be at least 1"),
        ("iotcore", "jobs", "perhaps", "iotcore.jobs: expected true or false"),
        ("verify", "rtol", "tight", "verify.rtol: expected a number"),
        ("tuning", "max_seconds", "long", "tuning.max_seconds: expected a number"),
        ("tuning", "share_uri", "https://x", "tuning.share_uri: must be an s3://"),
        # Keys the Run step never passes on: refused, not accepted and ignored.
        ("agent", "state_dir", "/data", "agent.state_dir: not configurable through the Greengrass component"),
        ("iotcore", "endpoint", "x-ats.iot.us-east-1.amazonaws.com", "iotcore.endpoint: not configurable"),
        ("mqtt", "enabled", "true", "mqtt.enabled: not configurable"),
        ("s3", "profile", "fleet", "s3.profile: not configurable"),
        ("http", "endpoint", "0.0.0.0:8573", "http.endpoint: 0.0.0.0:8573 is not a loopback address"),
    ]:
        report = propose(section, key, value)
        assert report.status == model.ConfigurationValidityStatus.REJECTED, (section, key, value)
        assert words in report.message, report.message
        assert report.message.startswith("deployment d-")
    assert nucleus.propose({"nonsense": {"a": "1"}}, "d-x").status == model.ConfigurationValidityStatus.REJECTED


def test_a_configuration_change_is_logged_as_applied_at_the_next_start(serve, caplog):
    _, nucleus, _ = serve()
    with caplog.at_level(logging.INFO, logger="agent.transports.greengrass"):
        nucleus.change(["agent", "queue_limit"])
        wait_until(lambda: "/agent/queue_limit changed" in caplog.text, WAIT_S)


# --- refusals at the edge --------------------------------------------------------------------------
def test_a_topic_the_recipe_does_not_allow_stops_the_start_naming_the_setting(serve):
    def without_requests(recipe):
        changed = json.loads(json.dumps(recipe))
        policies = changed["ComponentConfiguration"]["DefaultConfiguration"]["accessControl"]
        policy = policies["aws.greengrass.ipc.mqttproxy"]["com.neoedge.CompileAgent:mqttproxy:subscribe"]
        policy["resources"] = [r for r in policy["resources"] if not r.endswith("/StopCompilationJob")]
        return changed

    with pytest.raises(IpcRefused) as refused:
        serve(recipe_changes=without_requests)
    assert isinstance(refused.value, ConfigError)
    assert f"SubscribeToIoTCore neo/{THING}/StopCompilationJob" in str(refused.value)
    assert "accessControl" in str(refused.value) and "interpolateComponentConfiguration" in str(refused.value)


def test_no_ipc_connection_is_a_config_error_naming_the_socket(tmp_path):
    def no_nucleus():
        raise ConnectionRefusedError("connection refused")

    agent = Agent(make_config(tmp_path, iotcore=IotCoreConfig(jobs=False)))
    try:
        [transport] = greengrass_transports(agent, environ={greengrass.THING_ENV: THING}, client_factory=no_nucleus)
        with pytest.raises(IpcUnavailable, match=SOCKET_ENV):
            transport.start()
    finally:
        agent.store.close()


def test_ipc_errors_are_translated_naming_what_was_done():
    error = translate(model.ServiceError(message="spool is full"), "PublishToIoTCore neo/t/x", PublishFailed)
    assert isinstance(error, PublishFailed) and str(error) == "PublishToIoTCore neo/t/x: ServiceError: spool is full"
    refused = translate(model.UnauthorizedError(message="Not Authorized"), "SubscribeToIoTCore a/b")
    assert isinstance(refused, IpcRefused) and "UnauthorizedError: Not Authorized" in str(refused)


def test_one_filter_is_one_ipc_subscription(recipe):
    nucleus = FakeNucleus(recipe, THING)
    connection = IpcConnection(THING, client_factory=nucleus.client)
    filters = topics.request_topics(THING)
    for topic_filter in filters:
        connection.route(topic_filter, lambda message: None)
    try:
        connection.start()
        connection.subscribe(filters + filters[:2]).result()
        assert sorted(nucleus.subscriptions()) == sorted(filters)
    finally:
        connection.stop()
        nucleus.shutdown()


def test_the_thing_name_comes_from_the_nucleus(tmp_path):
    agent = Agent(make_config(tmp_path))
    try:
        with pytest.raises(ConfigError, match=greengrass.THING_ENV):
            greengrass_transports(agent, environ={})
        with pytest.raises(ConfigError, match=greengrass.THING_ENV):
            greengrass_transports(agent, environ={greengrass.THING_ENV: "a/b"})
    finally:
        agent.store.close()


# --- chosen automatically ----------------------------------------------------------------------------
def test_greengrass_is_recognised_by_the_nucleuss_environment():
    assert under_greengrass(GREENGRASS_ENV)
    assert not under_greengrass({SOCKET_ENV: "/s"})  # no token: not a component of a nucleus
    assert not under_greengrass({TOKEN_ENV: "t"})
    assert not under_greengrass({SOCKET_ENV: "", TOKEN_ENV: ""})


def test_the_daemon_serves_through_the_nucleus_when_it_started_the_agent(tmp_path, monkeypatch, caplog):
    for name, value in GREENGRASS_ENV.items():
        monkeypatch.setenv(name, value)
    direct = IotCoreConfig(endpoint="example-ats.iot.us-east-1.amazonaws.com", thing_name=THING, cert="c", key="k")
    config = make_config(tmp_path, http="", iotcore=direct)
    agent = Agent(config)
    try:
        with caplog.at_level(logging.WARNING, logger="agent.service.daemon"):
            built = build_transports(config, agent)
        assert [t.name for t in built] == ["greengrass", "iotjobs"]
        assert built[0].connection is built[1].connection and isinstance(built[0].connection, IpcConnection)
        assert "iotcore.endpoint is ignored" in caplog.text
        monkeypatch.delenv(TOKEN_ENV)  # not started by a nucleus: the direct connection
        assert [t.name for t in build_transports(config, agent)] == ["iotcore", "iotjobs"]
        assert build_transports(make_config(tmp_path, http=""), agent) == []
    finally:
        agent.store.close()


def test_under_greengrass_without_jobs_only_the_api_is_served(tmp_path, monkeypatch):
    for name, value in GREENGRASS_ENV.items():
        monkeypatch.setenv(name, value)
    config = make_config(tmp_path, http="", iotcore=IotCoreConfig(jobs=False))
    agent = Agent(config)
    try:
        assert [t.name for t in build_transports(config, agent)] == ["greengrass"]
    finally:
        agent.store.close()


# --- AWS IoT Jobs through the nucleus ---------------------------------------------------------------
@pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed")
def test_iot_jobs_run_through_the_nucleus_with_the_recipes_topics(serve, mosquitto):
    with JobsService(mosquitto.host, mosquitto.port, [THING]) as jobs:
        cloud = BrokerCloud(mosquitto.host, mosquitto.port, client_id=THING)
        agent, nucleus, transports = serve(jobs=True, cloud=cloud)
        assert [t.name for t in transports] == ["greengrass", "iotjobs"]
        document = {"operation": "CreateCompilationJob", "request": {
            key: value for key, value in scripted_job("unused", "stage=compile").request.items()
            if key != "CompilationJobName"}}
        jobs.add_job(THING, "fleet-1", document)
        jobs.wait_for(lambda: jobs.execution(THING, "fleet-1").status not in ("QUEUED", "IN_PROGRESS"), WAIT_S)
        execution = jobs.execution(THING, "fleet-1")
        assert execution.status == "SUCCEEDED", execution.status_details
        name = compilation_job_name("fleet-1")
        assert execution.status_details["CompilationJobName"] == name
        assert agent.store.get(name).channel == "iotjobs"
        assert nucleus.refused == []  # every Jobs topic the agent used is in the recipe's accessControl
        for transport in reversed(transports):  # while the Jobs stand-in still answers
            transport.stop(5)
