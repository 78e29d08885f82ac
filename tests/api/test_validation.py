"""Neo's rules beyond the model, through the service (so the order of checks is the real one)."""
from __future__ import annotations

import importlib.metadata
import json

import pytest

from agent.api import CompilationService
from agent.api.validation import SUPPORTED_FRAMEWORKS, device_target_check, parse_data_input_config
from agent.compile import frontends
from agent.device import detect
from agent.errors import ValidationException

from tests.api.helpers import DEVICES, make_body


def refused(service, body) -> str:
    with pytest.raises(ValidationException) as caught:
        service.create_compilation_job(body)
    return caught.value.message


def with_input(**changes):
    body = make_body()
    body["InputConfig"].update(changes)
    return body


def with_output(**changes):
    body = make_body()
    for key, value in changes.items():
        if value is None:
            body["OutputConfig"].pop(key, None)
        else:
            body["OutputConfig"][key] = value
    return body


PACKAGE_ARN = "arn:aws:sagemaker:us-west-2:123456789012:model-package/pkg/1"


def test_either_a_model_package_or_an_input_config(service):
    both = make_body(ModelPackageVersionArn=PACKAGE_ARN)
    assert refused(service, both).startswith("Provide either a ModelPackageVersionArn or an InputConfig")
    assert "has both" in refused(service, both)
    assert "has neither" in refused(service, make_body(InputConfig=None))
    message = refused(service, make_body(ModelPackageVersionArn=PACKAGE_ARN, InputConfig=None))
    assert message.startswith("ModelPackageVersionArn is not supported on this device")


def test_either_a_target_device_or_a_target_platform(service):
    both = with_output(TargetPlatform={"Os": "LINUX", "Arch": "X86_64"})
    assert refused(service, both) == (
        "OutputConfig must have either a TargetDevice or a TargetPlatform (exactly one); it has both."
    )
    assert "it has neither" in refused(service, with_output(TargetDevice=None))
    assert service.create_compilation_job(
        with_output(TargetDevice=None, TargetPlatform={"Os": "LINUX", "Arch": "X86_64"})
    )


@pytest.mark.parametrize(
    "options, fragment",
    [
        ("{not json", "must be a JSON object"),
        ('["mcpu"]', "must be a JSON object"),
        ('"abc"', "must be a JSON object"),
        ('{"gpu-code": "sm_62"}', "gpu-code is not accepted for TargetDevice ml_c5; it accepts mcpu, mattr, dtype, layout"),
        ('{"mcpu": "x", "trt-ver": "6"}', "trt-ver is not accepted for TargetDevice ml_c5"),
        ('{"dtype": "int64"}', "dtype 'int64' is not accepted for TargetDevice ml_c5"),
        ('{"mcpu": 5}', "mcpu must be a non-empty string"),
        ('{"mattr": [1]}', "mattr must be a list"),
    ],
)
def test_compiler_options_refused(service, options, fragment):
    """The device profile of the target decides which options exist (device_profiles/)."""
    message = refused(service, with_output(CompilerOptions=options))
    assert message.startswith("OutputConfig.CompilerOptions")
    assert fragment in message


@pytest.mark.parametrize(
    "options",
    ['{ }', '{"mcpu": "skylake-avx512"}', '{"mattr": ["+avx2", "+fma"]}', '{"mattr": "+avx2"}',
     '{"dtype": "float32"}', '{"dtype": "float", "mcpu": "core-avx2"}', "{'mcpu': 'haswell'}"],
)
def test_compiler_options_accepted(service, options):
    assert service.create_compilation_job(with_output(CompilerOptions=options))


def test_compiler_options_length_comes_from_the_model(service):
    message = refused(service, with_output(CompilerOptions="{}"))  # 2 < min 3
    assert "Member must have length greater than or equal to 3" in message


@pytest.mark.parametrize(
    "condition, ok",
    [
        ({"MaxRuntimeInSeconds": 2419200}, True),
        ({"MaxRuntimeInSeconds": 2419201}, False),
        ({}, True),
        ({"MaxRuntimeInSeconds": 900, "MaxWaitTimeInSeconds": 900}, True),
        ({"MaxRuntimeInSeconds": 900, "MaxWaitTimeInSeconds": 899}, False),
        ({"MaxWaitTimeInSeconds": 5}, True),
    ],
)
def test_stopping_condition(service, condition, ok):
    body = make_body(StoppingCondition=condition)
    if ok:
        assert service.create_compilation_job(body)
    else:
        assert refused(service, body).startswith("StoppingCondition.")


def test_framework_version_only_for_some_frameworks(service):
    message = refused(service, with_input(FrameworkVersion="1.7"))
    assert message == (
        "InputConfig.FrameworkVersion is allowed only for MXNET, PYTORCH, TENSORFLOW, TFLITE; Framework is ONNX."
    )


@pytest.mark.parametrize("framework", ["TENSORFLOW", "KERAS", "MXNET", "XGBOOST", "DARKNET", "SKLEARN"])
def test_frameworks_without_a_tvm_frontend_are_refused_saying_what_is_compiled(service, framework):
    message = refused(service, with_input(Framework=framework))
    assert message.startswith(f"Framework {framework} is not supported on this device (TVM 0.27 has no {framework} "
                              "frontend; ")
    assert message.endswith(f"; it compiles {', '.join(SUPPORTED_FRAMEWORKS)}.")
    assert SUPPORTED_FRAMEWORKS == ("ONNX", "PYTORCH", "TFLITE"), "CI installs every frontend's packages"


@pytest.mark.parametrize("framework, hint", [("TENSORFLOW", "TFLite"), ("KERAS", "tf2onnx"), ("MXNET", "ONNX"),
                                             ("XGBOOST", "XGBoost itself")])
def test_the_refusal_says_what_to_convert_to(service, framework, hint):
    assert hint in refused(service, with_input(Framework=framework))


@pytest.mark.parametrize("framework, uri, version", [
    ("PYTORCH", "s3://bucket/model.tar.gz", "1.13"), ("PYTORCH", "s3://bucket/model.pth", "2.0"),
    ("PYTORCH", "s3://bucket/exported.pt2", None), ("PYTORCH", "file:///m/model.pt", "2.13"),
    ("TFLITE", "s3://bucket/model.tflite", "1.15"), ("TFLITE", "s3://bucket/model.tar.gz", "2.18"),
])
def test_pytorch_and_tflite_are_accepted(service, framework, uri, version):
    changes = {"Framework": framework, "S3Uri": uri, "DataInputConfig": "[[1, 3, 224, 224]]"
               if framework == "PYTORCH" else '{"input": [1, 224, 224, 3]}'}
    if version:
        changes["FrameworkVersion"] = version
    assert service.create_compilation_job(with_input(**changes))


def test_a_framework_version_newer_than_the_device_has_is_refused(service):
    message = refused(service, with_input(Framework="PYTORCH", FrameworkVersion="9.1", DataInputConfig="[[1, 3]]"))
    torch_version = importlib.metadata.version("torch")
    assert message.startswith("InputConfig.FrameworkVersion 9.1 is newer than the PyTorch on this device "
                              f"(torch {torch_version})")
    major, minor = torch_version.split(".")[:2]
    assert f"saved by version {major}.{minor} or earlier" in message
    message = refused(service, with_input(Framework="TFLITE", FrameworkVersion="3.0"))
    assert "newer than the TensorFlow Lite on this device (tflite 2.18.0)" in message


def test_a_framework_version_that_is_no_version_is_refused(service):
    message = refused(service, with_input(Framework="PYTORCH", FrameworkVersion="1.x", DataInputConfig="[[1, 3]]"))
    assert message.startswith("InputConfig.FrameworkVersion '1.x' is not a PyTorch version")


def test_a_framework_whose_packages_are_missing_is_refused_naming_them(service, monkeypatch):
    real = frontends.installed_version
    monkeypatch.setattr(frontends, "installed_version", lambda d: None if d == "torch" else real(d))
    message = refused(service, with_input(Framework="PYTORCH"))
    assert message == ("Framework PYTORCH is not supported on this device (the torch package is not installed "
                       "here); it compiles ONNX, TFLITE.")


@pytest.mark.parametrize("framework, uri", [("PYTORCH", "s3://bucket/model.onnx"), ("ONNX", "s3://bucket/model.pt"),
                                            ("TFLITE", "s3://bucket/model.pt2")])
def test_a_bare_model_file_must_be_the_frameworks(service, framework, uri):
    message = refused(service, with_input(Framework=framework, S3Uri=uri, DataInputConfig="[[1, 3]]"
                                          if framework == "PYTORCH" else '{"data": [1, 3]}'))
    suffixes = "/".join(frontends.FRONTENDS[framework].suffixes)
    assert message == (f"InputConfig.S3Uri must point to a gzip compressed tar archive (.tar.gz) or a {suffixes} "
                       f"file for Framework {framework}; got {uri}.")


@pytest.mark.parametrize(
    "uri, ok",
    [
        ("s3://bucket/model.tar.gz", True),
        ("s3://bucket/dir/model.onnx", True),
        ("https://bucket.s3.amazonaws.com/model.tar.gz?X-Amz-Signature=abc", True),
        ("file:///data/models/model.onnx", True),
        ("file://localhost/data/model.tar.gz", True),
        ("s3://bucket/model.zip", False),
        ("s3://bucket/model.tar", False),
        ("s3://bucket/", False),
    ],
)
def test_model_uri_suffix(service, uri, ok):
    body = with_input(S3Uri=uri)
    if ok:
        assert service.create_compilation_job(body)
    else:
        assert refused(service, body).startswith("InputConfig.S3Uri must point to")


@pytest.mark.parametrize("uri", ["ftp://host/model.onnx", "/data/model.onnx", "file:model.onnx"])
def test_other_schemes_fail_the_relaxed_pattern(service, uri):
    message = refused(service, with_input(S3Uri=uri))
    assert "Member must satisfy regular expression pattern: ^(https|s3)://([^/]+)/?(.*)|file://([^/]*)/(.*)$" in message


def test_file_output_location_is_accepted(service):
    assert service.create_compilation_job(with_output(S3OutputLocation="file:///var/lib/neo/out"))


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("not json", "must be JSON"),
        ("[[1, 3, 224, 224]]", "must be an object of input name to shape for ONNX"),
        ('"data"', "must be an object"),
        ("{}", "must name at least one input"),
        ('{"data": [1, 3, 0, 224]}', "input 'data' must be a list of positive integers"),
        ('{"data": [1, -3]}', "positive integers"),
        ('{"data": [1, true]}', "positive integers"),
        ('{"data": [1.5]}', "positive integers"),
        ('{"data": []}', "positive integers"),
        ('{"data": "1,3,224,224"}', "positive integers"),
        ('{"": [1]}', "empty name"),
    ],
)
def test_data_input_config_refused(service, text, fragment):
    message = refused(service, with_input(DataInputConfig=text))
    assert message.startswith("InputConfig.DataInputConfig")
    assert fragment in message


def test_data_input_config_forms():
    assert parse_data_input_config('{"a": [1, 3], "b": [2]}', "ONNX") == {"a": [1, 3], "b": [2]}
    assert parse_data_input_config("[[1, 3, 224, 224]]", "PYTORCH") == [[1, 3, 224, 224]]
    with pytest.raises(ValidationException, match="positive integers"):
        parse_data_input_config("[[1, 0]]", "PYTORCH")


def test_data_input_config_is_optional(service):
    body = make_body()
    del body["InputConfig"]["DataInputConfig"]
    assert service.create_compilation_job(body)


# --- targets: the device profiles decide (agent.device, device_profiles/) --------------------
X86_DEVICE = detect(DEVICES / "x86_64_c5")
PI4 = detect(DEVICES / "rasp4b")


@pytest.mark.parametrize("output", [
    {"TargetDevice": "ml_c5"}, {"TargetDevice": "ml_m4"},
    {"TargetPlatform": {"Os": "LINUX", "Arch": "X86_64"}},
])
def test_an_x86_server_compiles_for_itself(output):
    device_target_check(detection=X86_DEVICE)(output)


@pytest.mark.parametrize("output, wanted", [
    ({"TargetDevice": "rasp4b"}, "TargetDevice rasp4b (Raspberry Pi 4 Model B) is not this device"),
    ({"TargetPlatform": {"Os": "LINUX", "Arch": "ARM64"}}, "TargetPlatform {Os: LINUX, Arch: ARM64}"),
    ({"TargetDevice": "ml_p3"}, "TargetDevice ml_p3"),
    ({"TargetDevice": "jetson_nano"}, "needs GPU code"),
    ({"TargetPlatform": {"Os": "ANDROID", "Arch": "X86_64"}}, "TargetPlatform {Os: ANDROID, Arch: X86_64}"),
])
def test_other_targets_are_refused_saying_what_this_device_is(output, wanted):
    with pytest.raises(ValidationException) as caught:
        device_target_check(detection=X86_DEVICE)(output)
    assert wanted in caught.value.message


def test_the_refusal_names_this_device_and_what_it_compiles_for():
    with pytest.raises(ValidationException) as caught:
        device_target_check(detection=X86_DEVICE)({"TargetDevice": "rasp4b"})
    assert caught.value.message.startswith("This device is an x86_64 server, the ml_c4/ml_c5/ml_m4/ml_m5 class")
    assert "it compiles for TargetDevice ml_c4, ml_c5, ml_m4, ml_m5 or TargetPlatform {Os: LINUX, Arch: X86_64}" \
        in caught.value.message
    assert "cross_compile" in caught.value.message, "the refusal names the setting that would allow it"


def test_a_pi_compiles_for_itself_and_cross_compiling_opens_other_targets():
    device_target_check(detection=PI4)({"TargetDevice": "rasp4b", "CompilerOptions": '{"mattr": ["+neon"]}'})
    with pytest.raises(ValidationException):
        device_target_check(detection=PI4)({"TargetDevice": "ml_c5"})
    device_target_check(detection=PI4, allow_cross=True)({"TargetDevice": "ml_c5"})
    with pytest.raises(ValidationException, match="needs GPU code"):
        device_target_check(detection=PI4, allow_cross=True)({"TargetDevice": "jetson_xavier"})


def test_the_default_hook_is_the_live_device(store, runner, config):
    service = CompilationService(store, runner, config)
    assert service.create_compilation_job(with_output(TargetDevice="ml_m5"))  # this machine: x86_64
    body = make_body("job-2", OutputConfig={"S3OutputLocation": "s3://b/o", "TargetDevice": "rasp4b"})
    assert "is not this device" in refused(service, body)


def test_a_replaced_target_hook_decides(store, runner, config):
    seen = []
    service = CompilationService(store, runner, config, target_check=seen.append)
    assert service.create_compilation_job(with_output(TargetDevice="jetson_nano"))
    assert seen == [{"S3OutputLocation": "s3://models/compiled/", "TargetDevice": "jetson_nano"}]


def test_model_rules_come_before_neo_rules(service):
    body = make_body("bad name", InputConfig=None)
    assert refused(service, body).startswith("1 validation error detected: Value 'bad name'")


def test_a_refused_body_stores_nothing_and_enqueues_nothing(service, store, runner):
    refused(service, with_input(Framework="KERAS"))
    assert store.find("job-1") is None and runner.calls == []
