"""greengrass/: the component recipe and the GDK configuration, against AWS's formats and the agent.

The formats are AWS's: the component recipe reference (RecipeFormatVersion 2020-01-25: keys,
manifests, lifecycle steps and their keys, artifacts) and the GDK CLI configuration file; which
recipe variables exist, and how they are interpolated, is the nucleus's KernelConfigResolver
(its two placeholder patterns are copied below). The Greengrass nucleus itself cannot run here
(a Java program that needs a thing registered in AWS IoT and AWS), so the Run and Install steps
are run by `sh` with their variables interpolated as the nucleus interpolates them, and the
accessControl is compared with the topics the agent's own code subscribes and publishes to.
"""
from __future__ import annotations

import ast
import json
import os
import re
import stat
import subprocess
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from agent.config import AgentConfig
from agent.configfile import all_keys, load_config, schema
from agent.errors import ConfigError
from agent.transports import greengrass, iotjobs, topics
from agent.transports.greengrass_config import EMPTY_IS_A_VALUE, check, configurable_keys, variable

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "greengrass"
RECIPE = yaml.safe_load((FOLDER / "recipe.yaml").read_text())
GDK = json.loads((FOLDER / "gdk-config.json").read_text())
DEFAULTS = RECIPE["ComponentConfiguration"]["DefaultConfiguration"]
THING_VARIABLE = "{iot:thingName}"

# The component recipe reference.
TOP_LEVEL = {"RecipeFormatVersion", "ComponentName", "ComponentVersion", "ComponentDescription",
             "ComponentPublisher", "ComponentConfiguration", "ComponentDependencies", "ComponentType",
             "ComponentSource", "Manifests", "Lifecycle"}
REQUIRED = {"RecipeFormatVersion", "ComponentName", "ComponentVersion", "Manifests", "Lifecycle"}
LIFECYCLE = {"Setenv", "Bootstrap", "Install", "Run", "Startup", "Shutdown", "Recover"}
STEP_KEYS = {"Script", "RequiresPrivilege", "Skipif", "Timeout", "Setenv"}
MANIFEST_KEYS = {"Name", "Platform", "Lifecycle", "Selections", "Artifacts"}
ARTIFACT_KEYS = {"URI", "Unarchive", "Permission", "Digest", "Algorithm"}
OPERATING_SYSTEMS = {"linux", "windows", "darwin"}
ARCHITECTURES = {"amd64", "arm", "aarch64", "x86"}
PERMISSIONS = {"NONE", "OWNER", "ALL"}
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
# The nucleus's KernelConfigResolver: {namespace:key} and {component:namespace:key}, and what it knows.
SAME_COMPONENT = re.compile(r"\{([.\w-]+):([^:}]*)}")
CROSS_COMPONENT = re.compile(r"\{([.\w-]+):([.\w-]+):([^:}]*)}")
SYSTEM_VARIABLES = {("artifacts", "path"), ("artifacts", "decompressedPath"), ("work", "path"),
                    ("kernel", "rootPath"), ("iot", "thingName")}
# The GDK CLI configuration file.
GDK_BUILD_SYSTEMS = {"zip", "maven", "gradle", "gradlew", "custom"}


def strings(value, path=()):
    """(path, string) for every string in the recipe, keys included."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from strings(key, path)
            yield from strings(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from strings(item, (*path, index))
    elif isinstance(value, str):
        yield path, value


def pointer(configuration: dict, json_pointer: str):
    """A JSON pointer (RFC 6901) into the configuration; KeyError if it names nothing."""
    value = configuration
    for part in json_pointer.split("/")[1:]:
        value = value[part.replace("~1", "/").replace("~0", "~")]
    return value


def interpolate(text: str, system: dict[tuple[str, str], str], configuration: dict) -> str:
    """What the nucleus makes of a lifecycle string: a placeholder it cannot fill stays as it is."""
    def fill(match: re.Match) -> str:
        namespace, key = match.groups()
        if namespace == "configuration":
            try:
                return str(pointer(configuration, key))
            except KeyError:
                return match.group(0)
        return system.get((namespace, key), match.group(0))

    return SAME_COMPONENT.sub(fill, text)


# --- the documented format ------------------------------------------------------------------------
def test_top_level_keys_are_the_documented_ones_with_the_required_ones_present():
    assert set(RECIPE) <= TOP_LEVEL, set(RECIPE) - TOP_LEVEL
    assert REQUIRED <= set(RECIPE)
    assert RECIPE["RecipeFormatVersion"] == "2020-01-25"
    assert isinstance(RECIPE["ComponentDescription"], str) and isinstance(RECIPE["ComponentPublisher"], str)
    assert "ComponentType" not in RECIPE  # the docs: let Greengrass infer it


def test_component_name_and_version():
    name, version = RECIPE["ComponentName"], RECIPE["ComponentVersion"]
    assert re.fullmatch(r"[a-zA-Z0-9._-]{1,128}", name) and not name.startswith("aws.greengrass")
    assert SEMVER.match(version) and len(version) <= 64
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert version == pyproject["project"]["version"]  # gdk publish sets the published one


def test_dependencies_include_the_token_exchange_service_as_hard():
    dependencies = RECIPE["ComponentDependencies"]
    tes = dependencies["aws.greengrass.TokenExchangeService"]
    assert tes["DependencyType"] == "HARD" and tes["VersionRequirement"].startswith(">=2.")
    for name, dependency in dependencies.items():
        assert set(dependency) <= {"VersionRequirement", "DependencyType"}, name
        assert dependency["VersionRequirement"] and dependency.get("DependencyType", "HARD") in ("SOFT", "HARD")


def test_manifests_name_linux_on_every_architecture_the_agent_has_profiles_for():
    manifests = RECIPE["Manifests"]
    assert {m["Platform"]["architecture"] for m in manifests} == {"amd64", "aarch64", "arm"}
    for manifest in manifests:
        assert set(manifest) <= MANIFEST_KEYS
        assert manifest["Platform"]["os"] == "linux" and manifest["Platform"]["architecture"] in ARCHITECTURES
        assert "Lifecycle" not in manifest  # the global Lifecycle applies to each
        [artifact] = manifest["Artifacts"]
        assert set(artifact) <= ARTIFACT_KEYS
        assert artifact["URI"] == "s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/neo-edge-agent.zip"
        assert artifact["Unarchive"] == "ZIP"
        assert set(artifact["Permission"].values()) <= PERMISSIONS


def test_lifecycle_has_install_and_run_with_the_documented_keys():
    lifecycle = RECIPE["Lifecycle"]
    assert set(lifecycle) <= LIFECYCLE and {"Install", "Run"} <= set(lifecycle)
    assert not {"Run", "Startup"} <= set(lifecycle)  # one or the other
    for name in set(lifecycle) - {"Setenv"}:
        step = lifecycle[name]
        assert set(step) <= STEP_KEYS, (name, set(step) - STEP_KEYS)
        assert step["Script"].strip() and step["RequiresPrivilege"] is False
    assert isinstance(lifecycle["Install"]["Timeout"], int) and lifecycle["Install"]["Timeout"] > 120
    assert "Timeout" not in lifecycle["Run"]  # it runs until stopped


@pytest.mark.parametrize("step", ["Install", "Run"])
def test_lifecycle_scripts_are_valid_shell(step):
    """The nucleus runs a step's Script with `sh -c`."""
    script = interpolate(RECIPE["Lifecycle"][step]["Script"], {k: "/x" for k in SYSTEM_VARIABLES}, DEFAULTS)
    subprocess.run(["sh", "-n", "-c", script], check=True)


def test_every_recipe_variable_is_one_the_nucleus_knows():
    found = []
    for path, text in strings(RECIPE):
        assert not CROSS_COMPONENT.search(text), (path, text)
        for namespace, key in SAME_COMPONENT.findall(text):
            found.append((namespace, key))
            if namespace == "configuration":
                assert path[0] == "Lifecycle", (path, text)
                pointer(DEFAULTS, key)  # names a key of DefaultConfiguration
            else:
                assert (namespace, key) in SYSTEM_VARIABLES, (path, text)
                if path[0] == "ComponentConfiguration":  # only system variables are interpolated there
                    assert (namespace, key) == ("iot", "thingName"), path
    assert ("iot", "thingName") in found and ("work", "path") in found


# --- accessControl: what the agent uses, nothing more ---------------------------------------------
def policies(service: str) -> dict:
    return DEFAULTS["accessControl"][service]


def resources_for(service: str, operation: str) -> list[str]:
    return [r for policy in policies(service).values() if operation in policy["operations"]
            for r in policy["resources"]]


def test_the_component_may_subscribe_exactly_to_the_agents_request_topics_and_the_jobs_answers():
    thing = THING_VARIABLE
    expected = topics.request_topics(thing) + iotjobs.subscription_filters(thing)
    granted = resources_for("aws.greengrass.ipc.mqttproxy", "aws.greengrass#SubscribeToIoTCore")
    assert sorted(granted) == sorted(expected)


def test_the_component_may_publish_exactly_its_answers_events_client_responses_and_jobs_requests():
    thing = THING_VARIABLE
    expected = [topic for operation in topics.OPERATIONS
                for topic in (topics.accepted_topic(thing, operation), topics.rejected_topic(thing, operation))]
    expected += [topics.events_filter(thing), topics.client_response_topic(thing, "+")]
    expected += iotjobs.request_filters(thing)
    granted = resources_for("aws.greengrass.ipc.mqttproxy", "aws.greengrass#PublishToIoTCore")
    assert sorted(granted) == sorted(expected)


def test_access_control_grants_nothing_else():
    assert set(DEFAULTS["accessControl"]) == {"aws.greengrass.ipc.mqttproxy", "aws.greengrass.ipc.componentmetric"}
    for service, service_policies in DEFAULTS["accessControl"].items():
        for name, policy in service_policies.items():
            assert name.startswith(RECIPE["ComponentName"] + ":"), name
            assert set(policy) <= {"policyDescription", "operations", "resources"}
            assert "*" not in policy["operations"] and "*" not in policy["resources"]
            assert all("#" not in r.split("/") for r in policy["resources"])
    mqtt = [op for p in policies("aws.greengrass.ipc.mqttproxy").values() for op in p["operations"]]
    assert sorted(mqtt) == ["aws.greengrass#PublishToIoTCore", "aws.greengrass#SubscribeToIoTCore"]
    assert resources_for("aws.greengrass.ipc.componentmetric", "aws.greengrass#PutComponentMetric") == \
        list(greengrass.METRICS)


# --- DefaultConfiguration: the agent's configuration -----------------------------------------------
def test_default_configuration_keys_are_the_agents_with_string_values():
    sections = schema()
    for section, table in DEFAULTS.items():
        if section == "accessControl":
            continue
        assert section in sections, section
        for key, value in table.items():
            assert key in sections[section], f"{section}.{key}"
            assert isinstance(value, str), f"{section}.{key}: Greengrass advises strings"
            assert not sections[section][key].secret, f"{section}.{key}: a secret in a deployment"
    assert "state_dir" not in DEFAULTS["agent"]  # the Run step puts it in the component's work folder


def shipped(constant: str):
    """A constant of agent/config.py as written there: tests/conftest.py patches DEFAULT_TUNING_SECONDS to 0."""
    tree = ast.parse((REPO / "agent" / "config.py").read_text())
    [value] = [node.value for node in tree.body if isinstance(node, ast.Assign)
               and any(getattr(target, "id", None) == constant for target in node.targets)]
    return ast.literal_eval(value)


def test_default_configuration_is_the_agents_own_defaults():
    expected = AgentConfig.from_mapping({})
    expected.tuning.default_seconds = shipped("DEFAULT_TUNING_SECONDS")
    assert expected.tuning.default_seconds > 0  # a device tunes each job unless told otherwise
    assert check(DEFAULTS) == expected


def test_default_configuration_covers_every_key_a_deployment_may_set_and_no_other():
    """A key added to the agent is either in the recipe or refused at deployment, never silently ignored."""
    named = {f"{section}.{key}" for section, table in DEFAULTS.items() if section != "accessControl" for key in table}
    assert named == configurable_keys()
    setenv = RECIPE["Lifecycle"]["Run"]["Setenv"]
    passed = {match for value in setenv.values() for match in re.findall(r"\{configuration:/(\w+)/(\w+)}", value)}
    assert {f"{section}.{key}" for section, key in passed} == configurable_keys()
    assert {"tuning.default_seconds", "tuning.max_seconds", "tuning.rest_of_job_seconds", "tuning.database",
            "tuning.share_uri"} <= configurable_keys()


@pytest.mark.parametrize("dotted", sorted(all_keys()))
def test_deployment_validation_accepts_exactly_the_keys_the_run_step_passes_on(dotted):
    section, name = dotted.split(".")
    configuration = json.loads(json.dumps(DEFAULTS))
    passed_on = dotted in configurable_keys()
    configuration.setdefault(section, {})[name] = DEFAULTS[section][name] if passed_on else "x"
    if passed_on:
        assert check(configuration, source="deployment d-1")
    else:
        with pytest.raises(ConfigError) as refused:
            check(configuration, source="deployment d-1")
        assert str(refused.value).startswith(
            f"deployment d-1:{dotted}: not configurable through the Greengrass component; ")


def test_deployment_validation_refuses_an_http_endpoint_the_agent_could_not_serve():
    """Off loopback the endpoint needs http.credentials, which a deployment cannot set; the agent would exit."""
    for endpoint, words in [("0.0.0.0:8573", "is not a loopback address"), ("8573", "expected HOST:PORT")]:
        configuration = json.loads(json.dumps(DEFAULTS))
        configuration["http"]["endpoint"] = endpoint
        with pytest.raises(ConfigError, match=f"^component configuration:http.endpoint: .*{words}"):
            check(configuration)
    for endpoint, served in [("[::1]:9000", "[::1]:9000"), ("", "")]:
        configuration = json.loads(json.dumps(DEFAULTS))
        configuration["http"]["endpoint"] = endpoint
        assert check(configuration).http == served


def test_the_run_step_passes_every_configuration_key_as_its_variable():
    setenv = RECIPE["Lifecycle"]["Run"]["Setenv"]
    wanted = {variable(section, key): f"{{configuration:/{section}/{key}}}"
              for section, table in DEFAULTS.items() if section != "accessControl" for key in table}
    passed = {name: value for name, value in setenv.items() if "{configuration:" in value}
    assert passed == wanted
    assert setenv["NEO_AGENT_STATE_DIR"] == "{work:path}/state" and setenv["NEO_AGENT_CONFIG"] == ""
    assert {name for name in setenv if name.startswith("NEO_AGENT_")} == set(wanted) | {
        "NEO_AGENT_STATE_DIR", "NEO_AGENT_CONFIG"}


# --- the lifecycle, run as the nucleus runs it -------------------------------------------------------
def fake_python(path: Path, log: Path) -> None:
    """A python3.11 / venv python that records its arguments and environment, and makes venvs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""#!/bin/sh
python3 - "$0" "$@" <<'PY'
import json, os, shutil, sys
me, args = sys.argv[1], sys.argv[2:]
with open({str(log)!r}, "a") as log:
    log.write(json.dumps({{"argv": args, "env": dict(os.environ)}}) + "\\n")
if args[:2] == ["-m", "venv"]:
    os.makedirs(os.path.join(args[2], "bin"), exist_ok=True)
    shutil.copy(me, os.path.join(args[2], "bin", "python"))
PY
""")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def run_step(step: str, tmp_path: Path, configuration: dict) -> list[dict]:
    """Run a lifecycle step as the nucleus does (Setenv, `sh -c`, cwd the work folder); the python calls."""
    work, unpacked, log = tmp_path / "work", tmp_path / "artifacts", tmp_path / "calls.jsonl"
    source = unpacked / "neo-edge-agent"
    if not source.exists():
        source.mkdir(parents=True)
        (source / "pyproject.toml").write_text("[project]\n")
    work.mkdir(exist_ok=True)
    system = {("work", "path"): str(work), ("artifacts", "decompressedPath"): str(unpacked),
              ("artifacts", "path"): str(tmp_path / "zip"), ("kernel", "rootPath"): "/greengrass/v2",
              ("iot", "thingName"): "gg-core-1"}
    bin_dir = tmp_path / "bin"
    fake_python(bin_dir / "python3.11", log)
    if step == "Run":  # made by the Install step
        fake_python(work / "venv" / "bin" / "python", log)
    definition = RECIPE["Lifecycle"][step]
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "SVCUID": "token",
           "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT": "/greengrass/v2/ipc.socket"}
    env.update({name: interpolate(value, system, configuration) for name, value in definition.get("Setenv", {}).items()})
    script = interpolate(definition["Script"], system, configuration)
    subprocess.run(["sh", "-c", script], cwd=work, env=env, check=True, timeout=60, capture_output=True)
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_the_run_step_starts_the_agent_with_the_component_configuration(tmp_path):
    [call] = run_step("Run", tmp_path, DEFAULTS)
    assert call["argv"] == ["-m", "agent.cli", "run"]
    env = call["env"]
    assert env["PYTHONPATH"] == str(tmp_path / "artifacts" / "neo-edge-agent")
    assert "NEO_AGENT_MEMORY_LIMIT_MB" not in env and "NEO_AGENT_BENCH_THREADS" not in env  # "": the default
    loaded = load_config(environ=env)
    assert loaded.state_dir == tmp_path / "work" / "state"
    expected = check(DEFAULTS)
    expected.state_dir = loaded.state_dir
    assert loaded == expected


def test_the_run_step_passes_a_deployments_values_and_drops_a_removed_key(tmp_path):
    configuration = json.loads(json.dumps(DEFAULTS))
    configuration["agent"]["queue_limit"] = "7"
    configuration["http"]["endpoint"] = ""  # off, not the default
    del configuration["bench"]["min_iterations"]  # the nucleus leaves {configuration:/bench/min_iterations}
    configuration["tuning"].update(default_seconds="0", max_seconds="900", database="false")
    [call] = run_step("Run", tmp_path, configuration)
    loaded = load_config(environ=call["env"])
    assert loaded.queue_limit == 7 and loaded.http == "" and "http.endpoint" in EMPTY_IS_A_VALUE
    assert (loaded.tuning.default_seconds, loaded.tuning.max_seconds, loaded.tuning.database) == (0, 900, False)
    assert loaded.tuning == check(configuration).tuning
    assert loaded.bench.min_iterations == AgentConfig.from_mapping({}).bench.min_iterations


def test_the_install_step_makes_the_venv_once_per_set_of_pins(tmp_path):
    calls = run_step("Install", tmp_path, DEFAULTS)
    assert [c["argv"][:3] for c in calls] == [["-m", "venv", str(tmp_path / "work" / "venv")],
                                              ["-m", "pip", "install"], ["-m", "pip", "install"]]
    assert calls[-1]["argv"][-1] == str(tmp_path / "work" / "build")  # a copy: the artifact is read-only
    assert not (tmp_path / "work" / "build").exists()
    assert run_step("Install", tmp_path, DEFAULTS) == calls  # the same pins: nothing run again
    (tmp_path / "artifacts" / "neo-edge-agent" / "pyproject.toml").write_text("[project]\nversion = '2'\n")
    assert len(run_step("Install", tmp_path, DEFAULTS)) == len(calls) * 2


# --- gdk -------------------------------------------------------------------------------------------------
def test_gdk_config_has_the_documented_shape_and_names_the_recipes_component():
    assert set(GDK) == {"component", "gdk_version"} and SEMVER.match(GDK["gdk_version"])
    [(name, component)] = GDK["component"].items()
    assert name == RECIPE["ComponentName"]
    assert {"author", "version", "build", "publish"} <= set(component)
    assert component["version"] == "NEXT_PATCH" or SEMVER.match(component["version"])
    assert component["build"]["build_system"] in GDK_BUILD_SYSTEMS
    if component["build"]["build_system"] == "custom":
        assert component["build"]["custom_build_command"]
    assert component["publish"]["bucket"] and component["publish"]["region"] in {
        "us-east-2", "us-east-1", "us-west-2", "ap-south-1", "ap-northeast-2", "ap-southeast-1", "ap-southeast-2",
        "ap-northeast-1", "ca-central-1", "cn-north-1", "eu-central-1", "eu-west-1", "eu-west-2", "us-gov-west-1",
        "us-gov-east-1"}


def test_the_gdk_build_makes_the_artifact_the_recipe_names(tmp_path):
    for name in ("gdk-config.json", "recipe.yaml"):
        (tmp_path / name).write_text((FOLDER / name).read_text())
    command = GDK["component"][RECIPE["ComponentName"]]["build"]["custom_build_command"]
    assert command == ["bash", "build.sh"]
    subprocess.run(["bash", str(FOLDER / "build.sh")], cwd=tmp_path, check=True, capture_output=True, timeout=120,
                   env={**os.environ, "PYTHON": "python3"})
    name, version = RECIPE["ComponentName"], GDK["component"][RECIPE["ComponentName"]]["version"]
    archive = tmp_path / "greengrass-build" / "artifacts" / name / version / Path(
        RECIPE["Manifests"][0]["Artifacts"][0]["URI"]).name
    with zipfile.ZipFile(archive) as built:
        members = set(built.namelist())
    assert {"pyproject.toml", "agent/cli.py", "agent/transports/greengrass.py", "device_profiles/rasp3b.toml"} <= members
    assert not any("__pycache__" in m for m in members)
    # Greengrass unpacks it into a folder named after the archive, which the lifecycle uses.
    assert f"{{artifacts:decompressedPath}}/{archive.stem}" in RECIPE["Lifecycle"]["Run"]["Setenv"]["PYTHONPATH"]
    assert (tmp_path / "greengrass-build" / "recipes" / "recipe.yaml").read_text() == \
        (FOLDER / "recipe.yaml").read_text()
