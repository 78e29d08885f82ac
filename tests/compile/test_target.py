"""The job's target from the device profiles, CompilerOptions, and the device description."""
from __future__ import annotations

import platform

import pytest

from agent.compile import target
from agent.errors import ClientError

HOST_ARCH = target.MACHINE_ARCH.get(platform.machine().lower(), "")
OTHER_ARCH = "ARM64" if HOST_ARCH == "X86_64" else "X86_64"
OTHER_CPU = {"X86_64": "skylake", "ARM64": "cortex-a72"}.get(HOST_ARCH, "generic")


def test_host_target_names_cpu_cores_and_triple():
    tvm_target, desc = target.host_target()
    assert desc["kind"] == "llvm"
    assert desc["num-cores"] == target.physical_cores() >= 1
    assert desc["mcpu"] and desc["mcpu"] != "generic"
    assert desc["mtriple"].split("-")[0] in (platform.machine(), "x86_64", "aarch64", "armv7l")
    assert "conda" not in desc["mtriple"]
    assert str(tvm_target.attrs["mcpu"]) == desc["mcpu"]
    assert int(tvm_target.attrs["num-cores"]) == desc["num-cores"]


@pytest.mark.parametrize("options", [
    '{"mcpu": "%s", "mattr": ["+sse2"]}' % OTHER_CPU,
    "{'mcpu': '%s', 'mattr': ['+sse2']}" % OTHER_CPU,   # the quoting Neo's docs show
    {"mcpu": OTHER_CPU, "mattr": "+sse2"},
])
def test_compiler_options_override_mcpu_and_add_mattr(options):
    _, desc = target.host_target(options)
    assert desc["mcpu"] == OTHER_CPU
    assert desc["mattr"] == ["+sse2"]


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_layout_is_an_agent_extension_the_target_ignores(layout):
    options = f'{{"layout": "{layout}"}}'
    resolution = target.resolve({"TargetPlatform": {"Os": "LINUX", "Arch": HOST_ARCH}, "CompilerOptions": options})
    assert resolution.options == {"layout": layout}
    assert "layout" not in target.tvm_target(resolution)[1]


@pytest.mark.parametrize("options, words", [
    ('{"layout": "NCHW4c"}', "CompilerOptions: layout 'NCHW4c' is not accepted"),
    ('{"mcpu": "no-such-cpu"}', "no-such-cpu"),
    ('{"mattr": ["neon"]}', "CompilerOptions: mattr must be a list"),
    ('{"mattr": 5}', "CompilerOptions: mattr must be a list"),
    ("not json", "CompilerOptions must be a JSON object"),
    ("[1, 2]", "CompilerOptions must be a JSON object"),
])
def test_bad_compiler_options(options, words):
    with pytest.raises(ClientError) as excinfo:
        target.host_target(options)
    assert excinfo.value.keyword == "InputConfiguration"
    assert words in excinfo.value.detail


def test_targets_of_this_device_resolve_natively():
    for output in ({"TargetPlatform": {"Os": "LINUX", "Arch": HOST_ARCH}}, {"TargetDevice": "ml_c5"}):
        resolution = target.resolve(output)
        assert resolution.native and target.runs_here(target.tvm_target(resolution)[1])


@pytest.mark.parametrize("output, words", [
    ({"TargetPlatform": {"Os": "LINUX", "Arch": OTHER_ARCH}}, "is not this device"),
    ({"TargetPlatform": {"Os": "ANDROID", "Arch": HOST_ARCH}}, "TargetPlatform {Os: ANDROID"),
    ({"TargetPlatform": {"Os": "LINUX", "Arch": "ARM64", "Accelerator": "NVIDIA"}}, "needs GPU code"),
])
def test_targets_this_device_cannot_compile_for(output, words):
    """The compile child checks again what the API checked: a ClientError naming the member."""
    with pytest.raises(ClientError) as excinfo:
        target.resolve(output)
    assert excinfo.value.keyword == "InputConfiguration" and words in excinfo.value.detail


def test_cross_compiling_for_an_arm_board_is_opt_in():
    resolution = target.resolve({"TargetDevice": "rasp4b"}, allow_cross=True)
    _, desc = target.tvm_target(resolution)
    assert not resolution.native
    assert desc["mtriple"].startswith("aarch64") and desc["mcpu"] == "cortex-a72"
    assert not target.runs_here(desc), "its code ships as objects for the Pi to link"


def test_device_description():
    desc = target.device_description()
    assert set(desc) >= {"cpu", "arch", "logical_cores", "physical_cores", "memory_mb", "os"}
    assert desc["arch"] == platform.machine() and desc["memory_mb"] > 0 and desc["cpu"]


@pytest.mark.parametrize("text, name", [
    ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU\n", "Intel(R) Xeon(R) CPU"),
    ("processor\t: 0\nBogoMIPS\t: 108.00\nCPU part\t: 0xd08\n\nHardware\t: BCM2835\nModel\t: Raspberry Pi 4 Model B\n",
     "BCM2835"),
])
def test_cpu_model_name_from_cpuinfo(tmp_path, text, name):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    assert target.cpu_model_name(path) == name
