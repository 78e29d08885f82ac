"""The configuration: one TOML file, its checks, the layers over it in their fixed order
(default < file < env < cli), from_mapping and `check-config` (`health`: tests/service/test_health.py).

Every load here names its environment, with NEO_AGENT_CONFIG="" unless the test is about
choosing the file, so no test reads this machine's /etc/neo-agent/agent.toml.
"""
from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from agent import cli, configfile
from agent.config import AgentConfig, BenchConfig
from agent.configfile import Origin, all_keys, load_config, load_with_origins, read_mapping, render
from agent.errors import ConfigError
from tests.service.daemon_process import REPO

EXAMPLE = REPO / "agent.toml.example"
NO_FILE = {"NEO_AGENT_CONFIG": ""}


def write(directory: Path, text: str, mode: int = 0o600, name: str = "agent.toml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    path.chmod(mode)
    return path


def load(path: Path | None = None, env: dict | None = None, **overrides):
    return load_with_origins(path, environ={**NO_FILE, **(env or {})}, overrides=overrides)


def failure(path: Path | None = None, env: dict | None = None, **overrides) -> str:
    with pytest.raises(ConfigError) as caught:
        load(path, env, **overrides)
    return str(caught.value)


# --- the layers and their order ------------------------------------------------------------------
@pytest.mark.parametrize("dotted, file_text, env_name, values, default", [
    ("agent.queue_limit", "[agent]\nqueue_limit = 10\n", "NEO_AGENT_QUEUE_LIMIT", (10, 20, 30), 100),
    ("mqtt.port", "[mqtt]\nport = 1884\n", "NEO_AGENT_MQTT_PORT", (1884, 1885, 1886), 1883),
])
def test_each_layer_wins_over_the_one_before(tmp_path, dotted, file_text, env_name, values, default):
    path = write(tmp_path, file_text)
    attr = all_keys()[dotted].attr
    file_value, env_value, cli_value = values

    def value_and_origin(loaded):
        value = loaded.config
        for part in attr:
            value = getattr(value, part)
        return value, loaded.origins.get(dotted)

    assert value_and_origin(load()) == (default, None)
    assert value_and_origin(load(path)) == (file_value, Origin("file", str(path)))
    env = {env_name: str(env_value)}
    assert value_and_origin(load(path, env)) == (env_value, Origin("env", env_name))
    override = {attr[0]: cli_value} if len(attr) == 1 else {dotted: cli_value}
    assert value_and_origin(load(path, env, **override)) == (cli_value, Origin("cli"))
    assert value_and_origin(load(None, env)) == (env_value, Origin("env", env_name))


def test_agent_config_load_reads_the_file_the_environment_names(tmp_path, monkeypatch):
    path = write(tmp_path, '[agent]\nregion = "eu-west-1"\nqueue_limit = 7\n[http]\nendpoint = "127.0.0.1:9100"\n')
    monkeypatch.setenv("NEO_AGENT_CONFIG", str(path))
    monkeypatch.setenv("NEO_AGENT_QUEUE_LIMIT", "8")
    config = AgentConfig.load(http="127.0.0.1:9200", pipeline_module="tests.runner.scripted_pipeline")
    assert (config.region, config.queue_limit, config.http) == ("eu-west-1", 8, "127.0.0.1:9200")
    assert config.pipeline_module == "tests.runner.scripted_pipeline"  # a test hook: overrides only
    assert load_config(path, environ={}).queue_limit == 7
    bench = AgentConfig.load(bench=BenchConfig(min_iterations=5, threads=1)).bench  # a whole section object
    assert (bench.min_iterations, bench.threads) == (5, 1)


def test_the_file_is_the_option_else_the_variable_else_the_default_path(tmp_path, monkeypatch):
    default = write(tmp_path / "etc", "[agent]\nqueue_limit = 1\n")
    named = write(tmp_path / "named", "[agent]\nqueue_limit = 2\n")
    given = write(tmp_path / "given", "[agent]\nqueue_limit = 3\n")
    monkeypatch.setattr(configfile, "DEFAULT_CONFIG_PATH", default)
    assert load_config(environ={}).queue_limit == 1
    assert load_config(environ={"NEO_AGENT_CONFIG": str(named)}).queue_limit == 2
    assert load_config(given, environ={"NEO_AGENT_CONFIG": str(named)}).queue_limit == 3
    assert load_config(environ={"NEO_AGENT_CONFIG": ""}).queue_limit == 100  # set but empty: no file
    assert load_config("", environ={}).queue_limit == 100  # --config ""
    monkeypatch.setattr(configfile, "DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")
    assert load_with_origins(environ={}).file is None  # the default path only when it exists
    with pytest.raises(ConfigError, match=r"nowhere\.toml: no such configuration file"):
        load_config(tmp_path / "nowhere.toml", environ={})
    with pytest.raises(ConfigError, match=r"nowhere\.toml: no such configuration file"):
        load_config(environ={"NEO_AGENT_CONFIG": str(tmp_path / "nowhere.toml")})


def test_a_table_is_one_key_replaced_whole(tmp_path):
    path = write(tmp_path, '[http.credentials]\nAKIDFILE = "from-the-file"\n')
    assert load(path).config.http_credentials == {"AKIDFILE": "from-the-file"}
    assert load(path, {"NEO_AGENT_HTTP_CREDENTIALS": "AKIDENV:x"}).config.http_credentials == {"AKIDENV": "x"}


# --- what the file may hold ----------------------------------------------------------------------
@pytest.mark.parametrize("text, message", [
    ('[agent]\nqueue_limit = "10"', 'agent.queue_limit: expected an integer, got a string "10"'),
    ("[agent]\ncross_compile = 1", "agent.cross_compile: expected true or false, got an integer 1"),
    ('[agent]\nstate_dir = ""', "agent.state_dir: expected a path, got an empty string"),
    ("[agent]\nstop_grace_s = nan", "agent.stop_grace_s: expected a finite number, got nan"),
    ("[mqtt]\nport = 1883.0", "mqtt.port: expected an integer, got a number 1883.0"),
    ("[mqtt]\nenabled = 1", "mqtt.enabled: expected true or false, got an integer 1"),
    ("[mqtt]\nprotocol = 5", "mqtt.protocol: expected a string, got an integer 5"),
    ('[mqtt]\nallowed_accounts = "111111111111"', "mqtt.allowed_accounts: expected an array of strings, got a string "
                                                '"111111111111"'),
    ("[mqtt]\nallowed_accounts = [111111111111]", "mqtt.allowed_accounts: expected an array of strings, got an array"),
    ("[bench]\nmin_seconds = true", "bench.min_seconds: expected a number, got a boolean true"),
    ('[http]\nendpoint = ["127.0.0.1:1"]', "http.endpoint: expected a string, got an array"),
    ('[s3.role_aliases]\n"arn:aws:iam::123456789012:role/r" = 1',
     "s3.role_aliases: expected a table of strings, got a table whose 'arn:aws:iam::123456789012:role/r' is an integer"),
    ("[mqtt]\nhost = 2024-01-01", "mqtt.host: expected a string, got a date 2024-01-01"),
    ('mqtt = "on"', 'mqtt: expected a table, got a string "on"; a table ([mqtt])'),
])
def test_a_value_of_the_wrong_type_names_the_file_the_key_and_the_type(tmp_path, text, message):
    path = write(tmp_path, text + "\n")
    assert failure(path) == f"{path}:{message}"


def test_a_secret_of_the_wrong_type_is_not_echoed(tmp_path):
    said = failure(write(tmp_path, '[mqtt]\nusername = "u"\npassword = 987654321\n'))
    assert "mqtt.password: expected a string, got an integer" in said and "987654321" not in said
    said = failure(write(tmp_path, "[http.credentials]\nAKID = 987654321\n"))
    assert "http.credentials: expected a table of strings" in said and "987654321" not in said


@pytest.mark.parametrize("text, message", [
    ('[mqtt]\nhots = "broker"', "mqtt.hots: unknown key; did you mean mqtt.host?"),
    ("[agent]\nqueue_limt = 3", "agent.queue_limt: unknown key; did you mean agent.queue_limit?"),
    ('[mqt]\nhost = "broker"', ": unknown section [mqt]; did you mean [mqtt]?"),
    ("[benchmark]\nthreads = 2", ": unknown section [benchmark]; did you mean [bench]?"),
    ('region = "eu-west-1"', "region: settings go in a section; did you mean agent.region (under [agent])?"),
    ('http = "127.0.0.1:1"', 'http: expected a table, got a string "127.0.0.1:1"; did you mean http.endpoint '
                             "(under [http])?"),
    ('[agent]\nhttp = "127.0.0.1:1"', "agent.http: unknown key; did you mean http.endpoint?"),
    ('[mqtt]\nendpoint = "x"', "mqtt.endpoint: unknown key; it is a key of http.endpoint and iotcore.endpoint"),
    ('[agent]\npipeline_module = "x"', "agent.pipeline_module: unknown key (the keys of [agent]: state_dir, "),
])
def test_an_unknown_key_or_section_is_named_with_the_nearest_one(tmp_path, text, message):
    path = write(tmp_path, text + "\n")
    assert failure(path).startswith(f"{path}{'' if message.startswith(':') else ':'}{message}")


def test_a_file_that_is_not_toml_says_where(tmp_path):
    path = write(tmp_path, "[agent]\nregion = eu-west-1\n")
    assert re.fullmatch(rf"{re.escape(str(path))}: not valid TOML: .*\(at line 2, column \d+\)", failure(path))


def test_relative_paths_are_taken_from_the_files_directory(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    write(conf, "", name="ca.pem")
    write(conf, '[agent]\nstate_dir = "state"\n[mqtt]\ntls_ca = "ca.pem"\n[iotcore]\nca = ""\n')
    monkeypatch.chdir(tmp_path)  # a relative --config, read from elsewhere
    config = load(Path("conf/agent.toml")).config
    assert config.state_dir == conf / "state" and config.mqtt.tls_ca == str(conf / "ca.pem")
    assert config.iotcore.ca == ""  # empty stays unset, not "."
    path = write(conf, '[mqtt]\ntls_ca = "missing.pem"\n')
    assert failure(path) == f"{path}:mqtt.tls_ca: no such file: {conf / 'missing.pem'}"
    assert load(write(conf, '[agent]\nstate_dir = "~/neo"\n')).config.state_dir == Path.home() / "neo"


@pytest.mark.parametrize("text, secret", [
    ('[mqtt]\nusername = "u"\npassword = "p4ssw0rd"', "mqtt.password"),
    ('[s3]\naccess_key_id = "AKID"\nsecret_access_key = "s3cr3t"', "s3.secret_access_key"),
    ('[s3]\naccess_key_id = "AKID"\nsecret_access_key = "s3cr3t"\nsession_token = "t0ken"', "s3.session_token"),
    ('[http.credentials]\nAKID = "s3cr3t"', "http.credentials"),
])
def test_a_file_holding_a_secret_must_be_owner_only(tmp_path, text, secret):
    for mode in (0o640, 0o604, 0o660):
        path = write(tmp_path, text + "\n", mode=mode)
        said = failure(path)
        assert said.startswith(f"{path}: holds secrets (") and secret in said
        assert f"mode {mode:04o}" in said and f"chmod 600 {path}" in said
        assert "s3cr3t" not in said and "p4ssw0rd" not in said
    for mode in (0o600, 0o400):
        load(write(tmp_path, text + "\n", mode=mode))


@pytest.mark.parametrize("section, name", [
    ('[iotcore]\nendpoint = "a1b2c3-ats.iot.us-east-1.amazonaws.com"\nthing_name = "gw-1"\ncert = "{cert}"\nkey = "{key}"',
     "iotcore.key"),
    ('[mqtt]\ntls_cert = "{cert}"\ntls_key = "{key}"', "mqtt.tls_key"),
    ('[http]\ntls_cert = "{cert}"\ntls_key = "{key}"', "http.tls_key"),
    ('[s3]\niot_endpoint = "creds.example"\niot_role_alias = "neo"\niot_cert = "{cert}"\niot_key = "{key}"',
     "s3.iot_key"),
])
def test_a_private_key_file_the_configuration_names_must_be_owner_only(tmp_path, section, name):
    """Refused at start by the setting's name, its mode and the fix, as ssh refuses a key that
    others can read; the certificate beside it (public) may be world-readable."""
    cert, key = tmp_path / "thing.pem", tmp_path / "thing.key"
    cert.write_text("certificate")
    cert.chmod(0o644)
    key.write_text("private key")
    path = write(tmp_path / "etc", section.format(cert=cert, key=key) + "\n", mode=0o644)
    for mode in (0o644, 0o640, 0o604, 0o620):
        key.chmod(mode)
        said = failure(path)
        assert said == (f"{path}:{name}: {key} can be read or written by its group or others (mode {mode:04o}); "
                        f"a private key must be owner-only: chmod 600 {key}")
    for mode in (0o600, 0o400):
        key.chmod(mode)
        load(path)


def test_a_file_without_secrets_may_be_world_readable(tmp_path):
    load(write(tmp_path, '[mqtt]\nusername = "u"\npassword = ""\n[http.credentials]\n', mode=0o644))


def test_a_rule_the_value_breaks_names_where_it_was_set(tmp_path):
    path = write(tmp_path, '[agent]\naccount = "12"\n[mqtt]\nport = 70000\n')
    assert failure(path) == f"{path}:agent.account: must be 12 digits, got '12'"
    assert failure(path, {"NEO_AGENT_ACCOUNT": "123456789012"}) == f"{path}:mqtt.port: not a port: 70000"
    said = failure(None, {"NEO_AGENT_ACCOUNT": "12"})
    assert said == "agent.account (NEO_AGENT_ACCOUNT): must be 12 digits, got '12'"
    assert failure(None, account="12") == "agent.account (command line): must be 12 digits, got '12'"
    assert failure(None, {"NEO_AGENT_QUEUE_LIMIT": "ten"}) == "NEO_AGENT_QUEUE_LIMIT: cannot read 'ten' as int"
    # Set in no layer: the rule's own words.
    assert failure(write(tmp_path, '[s3]\niot_endpoint = "creds.example"\n')).startswith("s3.iot_role_alias: required")
    with pytest.raises(ConfigError, match=r"queue_limt \(command line\): not a setting; did you mean agent\.queue_lim"):
        load(queue_limt=3)


# --- cross_compile -------------------------------------------------------------------------------
def test_cross_compile_is_a_checked_boolean_that_reaches_the_compile_child(tmp_path):
    assert load().config.cross_compile is False
    assert load(env={"NEO_AGENT_CROSS_COMPILE": "true"}).config.cross_compile is True
    assert load(write(tmp_path, "[agent]\ncross_compile = true\n")).config.cross_compile is True
    assert failure(env={"NEO_AGENT_CROSS_COMPILE": "maybe"}) == "NEO_AGENT_CROSS_COMPILE: cannot read 'maybe' as bool"
    with pytest.raises(ConfigError, match="cross_compile: must be true or false"):
        AgentConfig(state_dir=tmp_path, cross_compile="yes")
    config = AgentConfig(state_dir=tmp_path, cross_compile=True)
    assert AgentConfig.from_child(json.loads(json.dumps(config.to_child())), {}).cross_compile is True


# --- from_mapping (a configuration that arrives whole, as a deployment's does) ------------------
def test_from_mapping_checks_a_file_shaped_dict_over_the_defaults_only(tmp_path, monkeypatch):
    monkeypatch.setenv("NEO_AGENT_REGION", "ap-south-1")  # not a layer of from_mapping
    config = AgentConfig.from_mapping({
        "agent": {"state_dir": str(tmp_path), "region": "eu-west-1", "cross_compile": True},
        "http": {"endpoint": "127.0.0.1:9000", "credentials": {"AKID": "s3cr3t"}},
        "mqtt": {"enabled": True, "port": 8883, "allowed_accounts": ["111111111111"]},
        "s3": {"role_aliases": {}},
    }, source="greengrass")
    assert (config.region, config.cross_compile, config.http, config.http_credentials) == (
        "eu-west-1", True, "127.0.0.1:9000", {"AKID": "s3cr3t"})
    assert config.mqtt.allowed_accounts == ("111111111111",) and config.queue_limit == 100
    cases = [
        ({"mqtt": {"port": "8883"}}, 'greengrass:mqtt.port: expected an integer, got a string "8883"'),
        ({"mqtt": {"port": 0}}, "greengrass:mqtt.port: not a port: 0"),
        ({"mqt": {}}, "greengrass: unknown section [mqt]; did you mean [mqtt]?"),
        ({"agent": {"regoin": "x"}}, "greengrass:agent.regoin: unknown key; did you mean agent.region?"),
        (["agent"], "greengrass: expected a table of sections, got an array"),
    ]
    for mapping, message in cases:
        with pytest.raises(ConfigError) as caught:
            AgentConfig.from_mapping(mapping, source="greengrass")
        assert str(caught.value) == message
    with pytest.raises(ConfigError, match=r"^<mapping>:mqtt\.port: "):
        AgentConfig.from_mapping({"mqtt": {"port": True}})


# --- the schema and the example file -------------------------------------------------------------
def test_the_environment_variables_keep_their_names():
    names = {key.env for key in all_keys().values()}
    assert {"NEO_AGENT_STATE_DIR", "NEO_AGENT_HTTP", "NEO_AGENT_HTTP_CREDENTIALS", "NEO_AGENT_CROSS_COMPILE",
            "NEO_AGENT_BENCH_MIN_ITERATIONS", "NEO_AGENT_VERIFY_RTOL", "NEO_AGENT_IOTCORE_KEEP_ALIVE_S",
            "NEO_AGENT_MQTT_ALLOWED_ROLE_ARNS", "NEO_AGENT_S3_ROLE_ALIASES", "NEO_AGENT_S3_SECRET_ACCESS_KEY"} <= names
    assert "NEO_AGENT_PIPELINE_MODULE" not in names
    secrets = {key.dotted for key in all_keys().values() if key.secret}
    assert secrets == {"http.credentials", "mqtt.password", "s3.secret_access_key", "s3.session_token"}


def test_the_example_file_loads_as_it_is_and_shows_every_key(tmp_path):
    as_is = load(write(tmp_path, EXAMPLE.read_text()))  # every key commented out; two empty tables
    assert set(as_is.origins) == {"http.credentials", "s3.role_aliases"}
    assert as_is.config.http_credentials == {} and as_is.config.s3.role_aliases == {}
    uncommented = re.sub(r"(?m)^#(?=[\w\"])", "", EXAMPLE.read_text())
    settings = read_mapping(tomllib.loads(uncommented), Origin("file", "example"), "example", base=tmp_path)
    assert set(settings) == set(all_keys())
    assert settings["http.credentials"][0] and settings["s3.role_aliases"][0]  # an example entry each


# --- neo-agent check-config ----------------------------------------------------------------------
def test_check_config_prints_every_value_and_its_source_and_hides_secrets(tmp_path, monkeypatch, capsys):
    path = write(tmp_path, '[agent]\nqueue_limit = 10\n[mqtt]\nusername = "u"\npassword = "p4ssw0rd"\n'
                           '[http.credentials]\nAKIDFILE = "s3cr3t"\n')
    monkeypatch.setenv("NEO_AGENT_REGION", "eu-west-1")
    monkeypatch.setenv("NEO_AGENT_MQTT_HOTS", "typo")
    assert cli.main(["--config", str(path), "check-config", "--http", "127.0.0.1:9999",
                     "--state-dir", str(tmp_path / "state")]) == 0
    out = capsys.readouterr().out
    lines, section = {}, ""
    for line in out.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif " = " in line:
            lines[f"{section}.{line.split(' = ')[0]}"] = line
    assert re.fullmatch(rf"queue_limit = 10 +# file {re.escape(str(path))}", lines["agent.queue_limit"])
    assert re.fullmatch(r'region = "eu-west-1" +# env NEO_AGENT_REGION', lines["agent.region"])
    assert re.fullmatch(r'endpoint = "127.0.0.1:9999" +# cli', lines["http.endpoint"])
    assert re.fullmatch(r'account = "000000000000" +# default', lines["agent.account"])
    assert re.fullmatch(r"password = \(set\) +# file .*", lines["mqtt.password"])
    assert re.fullmatch(r'credentials = \{ "AKIDFILE" = \(set\) \} +# file .*', lines["http.credentials"])
    assert re.fullmatch(r'session_token = "" +# default', lines["s3.session_token"])
    assert set(lines) == set(all_keys())
    assert "p4ssw0rd" not in out and "s3cr3t" not in out
    assert f"# file: {path} (--config)" in out
    assert "# note: NEO_AGENT_MQTT_HOTS is not a setting and is ignored; did you mean NEO_AGENT_MQTT_HOST?" in out


def test_check_config_output_without_secrets_is_the_same_configuration(tmp_path, capsys):
    path = write(tmp_path, '[agent]\nstate_dir = "state"\ncross_compile = true\n[mqtt]\nallowed_accounts = '
                           '["111111111111"]\n[s3.role_aliases]\n"arn:aws:iam::123456789012:role/r" = "alias"\n'
                           '[s3]\niot_endpoint = "creds.example"\niot_cert = "c.pem"\niot_key = "k.pem"\n')
    write(tmp_path, "", name="c.pem"), write(tmp_path, "", name="k.pem")
    assert cli.main(["check-config", "--config", str(path)]) == 0
    shown = AgentConfig.from_mapping(tomllib.loads(capsys.readouterr().out))
    assert shown == load_config(path, environ=NO_FILE)


def test_check_config_exits_1_naming_the_key(tmp_path, capsys):
    path = write(tmp_path, '[agent]\nqueue_limit = "10"\n')
    assert cli.main(["check-config", "--config", str(path)]) == 1
    captured = capsys.readouterr()
    said = f'neo-agent check-config: {path}:agent.queue_limit: expected an integer, got a string "10"\n'
    assert (captured.out, captured.err) == ("", said)
    good = write(tmp_path / "good", "[agent]\nqueue_limit = 10\n")
    assert cli.main(["--config", str(path), "check-config", "--config", str(good)]) == 0  # the later one wins
    assert cli.main(["check-config", "--config", str(tmp_path / "absent.toml")]) == 1
    assert "absent.toml: no such configuration file" in capsys.readouterr().err


def test_other_commands_keep_exit_2_for_a_wrong_configuration(tmp_path, capsys):
    path = write(tmp_path, "[agent]\nconcurrency = 0\n")
    assert cli.main(["--config", str(path), "run", "--state-dir", str(tmp_path / "state")]) == 2
    assert f"configuration: {path}:agent.concurrency: must be at least 1" in capsys.readouterr().err


def test_render_marks_values_derived_from_another_section(tmp_path):
    loaded = load(write(tmp_path, '[iotcore]\nthing_name = "edge-7"\n'))
    assert re.search(r'(?m)^iot_thing_name = "edge-7" +# derived$', render(loaded))


def test_a_default_file_this_user_cannot_read_is_skipped_with_a_note(tmp_path, monkeypatch):
    """/etc/neo-agent is the agent's (0700): a client command run by someone else carries on without it."""
    default = write(tmp_path, "[agent]\nqueue_limit = 1\n")
    monkeypatch.setattr(configfile, "DEFAULT_CONFIG_PATH", default)
    monkeypatch.setattr(configfile.os, "access", lambda path, mode: False)
    loaded = load_with_origins(environ={})
    assert loaded.file is None and loaded.config.queue_limit == 100
    assert "is not readable by this user" in loaded.file_note
