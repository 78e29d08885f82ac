"""agent.device and device_profiles/: every data file checks out and covers Neo's enum, each
device class is recognised from its captured /proc and device-tree files, requests for other
devices and refused targets are answered with the reason, CompilerOptions override and are
checked, and each profile's TVM target builds a small model (run here when it is this
machine's, else exported as a .tar of objects whose ELF headers must be the profile's)."""
from __future__ import annotations

import io
import json
import shutil
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from agent.device import (
    NotThisDevice,
    OptionError,
    RefusedTarget,
    api_target_check,
    check_target,
    detect,
    load_catalog,
    load_profiles,
    matches,
    profile_for,
)
from agent.device.catalog import SOURCE_DIRECTORY as DEFAULT_DIRECTORY
from agent.errors import ConfigError, ValidationException

DEVICES = Path(__file__).parent / "data" / "devices"
NVIDIA = {"Os": "LINUX", "Arch": "ARM64", "Accelerator": "NVIDIA"}
NVIDIA_OPTIONS = {"gpu-code": "sm_72", "trt-ver": "8.5.2", "cuda-ver": "11.4"}

# captured tree: (board, profile the agent compiles for there, userland, cores, evidence fragments)
EXPECTED = {
    "x86_64_c5": ("x86_64_server", "x86_64_server", "x86_64", 2, ["DMI: Amazon EC2 c5.xlarge", "loader /lib64"]),
    "graviton2_c6g": ("arm64_server", "arm64_server", "aarch64", 4, ["4x Neoverse-N1"]),
    "rasp3b": ("rasp3b", "rasp3b", "armv7l", 4, ['"brcm,bcm2837"', "Raspberry Pi 3 Model B Rev 1.2", "4x Cortex-A53"]),
    "rasp3b_64bit_os": ("rasp3b", "linux_arm64", "aarch64", 4, ["Raspberry Pi 3 Model B Plus Rev 1.3"]),
    "rasp4b": ("rasp4b", "rasp4b", "aarch64", 4, ['"brcm,bcm2711"', "Raspberry Pi 4 Model B Rev 1.4", "4x Cortex-A72"]),
    "rasp4b_32bit_userland": ("rasp4b", "linux_arm_eabihf", "armv7l", 4, ["loader /lib/ld-linux-armhf.so.3"]),
    "jetson_nano": ("jetson_nano", "jetson_nano", "aarch64", 4, ['"nvidia,jetson-nano"', "BOARD: t210ref", "4x Cortex-A57"]),
    "jetson_nano_without_l4t": (None, "linux_arm64", "aarch64", 4, ["machine aarch64"]),
    "jetson_tx1": ("jetson_tx1", "jetson_tx1", "aarch64", 4, ['"nvidia,p2371-2180"', "Jetson TX1"]),
    "jetson_tx2": ("jetson_tx2", "jetson_tx2", "aarch64", 6, ['"nvidia,tegra186"', "2x Denver2", "4x Cortex-A57"]),
    "jetson_xavier": ("jetson_xavier", "jetson_xavier", "aarch64", 8, ['"nvidia,tegra194"', "8x Carmel"]),
    "jetson_xavier_nx": ("jetson_xavier", "jetson_xavier", "aarch64", 6, ["Xavier NX", "R35 (release)"]),
    "jetson_orin": (None, "linux_arm64_nvidia", "aarch64", 12, ["/etc/nv_tegra_release: # R35"]),
    "rk3399": ("rk3399", "rk3399", "aarch64", 6, ['"rockchip,rk3399"', "4x Cortex-A53, 2x Cortex-A72"]),
    "imx8qm": ("imx8qm", "imx8qm", "aarch64", 6, ['"fsl,imx8qm"', "i.MX8QM MEK"]),
    "imx8mplus": ("imx8mplus", "imx8mplus", "aarch64", 4, ['"fsl,imx8mp"', "4x Cortex-A53"]),
    "rock5b": (None, "linux_arm64", "aarch64", 8, ["machine aarch64"]),
    "visionfive2_riscv64": (None, None, "riscv64", 4, ["machine riscv64"]),
}
NEO_HOSTED = {"ml_c4", "ml_c5", "ml_m4", "ml_m5", "jetson_nano", "jetson_tx2", "jetson_xavier",
              "rasp3b", "rasp4b", "rk3399", "imx8qm", "imx8mplus"}   # the list, at least


def tree(name: str):
    return detect(DEVICES / name)


# --- the data files -------------------------------------------------------------------------
def test_every_profile_file_loads_and_checks():
    catalog = load_catalog()
    files = {p.stem for p in DEFAULT_DIRECTORY.glob("*.toml")} - {"refused"}
    assert set(catalog.profiles) == files
    for profile in catalog.profiles.values():
        assert profile.description and profile.title and profile.identify
        assert profile.llvm["mtriple"].startswith({"x86_64": "x86_64", "aarch64": "aarch64", "armv7l": "armv7"}[profile.arch])


def test_every_neo_target_device_is_hosted_or_refused_with_a_reason():
    from agent.api.shapes import service_model

    enum = set(service_model().shape_for("TargetDevice").enum)
    catalog = load_catalog()
    hosted = {name for p in catalog.profiles.values() for name in p.target_devices}
    assert hosted | set(catalog.refused_devices) == enum
    assert not hosted & set(catalog.refused_devices)
    assert NEO_HOSTED <= hosted


def test_every_target_platform_combination_is_a_profile_or_refused_with_a_reason():
    from agent.api.shapes import service_model

    model = service_model()
    enum = {name: model.shape_for(f"TargetPlatform{name}").enum for name in ("Os", "Arch", "Accelerator")}
    hosted = []
    for os_ in enum["Os"]:
        for arch in enum["Arch"]:
            for accelerator in enum["Accelerator"] + [None]:
                wanted = {"Os": os_, "Arch": arch, **({"Accelerator": accelerator} if accelerator else {})}
                try:
                    hosted.append(profile_for({"TargetPlatform": wanted}).name)
                except RefusedTarget as exc:
                    assert "is not supported by this agent: " in str(exc)   # a reason, not "unknown"
    assert sorted(hosted) == ["linux_arm64", "linux_arm64_nvidia", "linux_arm_eabihf", "linux_x86_64"]


@pytest.mark.parametrize("device", sorted(load_catalog().refused_devices))
def test_refused_target_device_gives_its_reason(device):
    with pytest.raises(RefusedTarget) as caught:
        profile_for({"TargetDevice": device})
    assert str(caught.value).startswith(f"TargetDevice {device} is not supported by this agent: ")
    assert load_catalog().refused_devices[device] in str(caught.value)


@pytest.mark.parametrize("platform, words", [
    ({"Os": "ANDROID", "Arch": "ARM64"}, "Linux only"),
    ({"Os": "LINUX", "Arch": "X86"}, "32-bit x86"),
    ({"Os": "LINUX", "Arch": "ARM_EABI"}, "ARM_EABIHF"),
    ({"Os": "LINUX", "Arch": "ARM64", "Accelerator": "MALI"}, "OpenCL"),
    ({"Os": "LINUX", "Arch": "X86_64", "Accelerator": "NVIDIA"}, "only for Jetson"),
])
def test_refused_target_platform_gives_its_reason(platform, words):
    with pytest.raises(RefusedTarget, match=words):
        profile_for({"TargetPlatform": platform})


BAD_FILES = [  # (file, text, replacement, what the ConfigError must name)
    ("rasp4b.toml", 'mcpu = "cortex-a72"\n', "", "target.mcpu"),
    ("rasp4b.toml", "num-cores = 4", 'num-cores = "four"', "target.num-cores"),
    ("rasp4b.toml", 'name = "rasp4b"', 'colour = "red"\nname = "rasp4b"', "colour"),
    ("rasp4b.toml", 'kind = "device"', 'kind = "board"', "kind"),
    ("rasp4b.toml", 'name = "rasp4b"', "name = rasp4b", "rasp4b.toml"),
    ("linux_arm64.toml", 'name = "linux_arm64"', 'name = "arm64"', "name"),
    ("jetson_nano.toml", 'arch = "sm_53"', 'arch = "53"', "target.arch"),
    ("jetson_tx2.toml", 'use = "recorded"', 'use = "target"', "options.trt-ver.use"),
    ("rasp3b.toml", 'mfloat-abi = "hard"', 'mfloat-abi = "soft"', "target.mfloat-abi"),
    ("rk3399.toml", '{ cpu = ["0x41:0xd03", "0x41:0xd08"] }', '{ cpu = ["A53"] }', "detect.confirm[0].cpu"),
    ("rk3399.toml", '{ compatible = "rockchip,rk3399" }', '{ compatible = "rockchip,rk3399", model = "x" }',
     "detect.identify[0]"),
    ("imx8qm.toml", "item_pattern = '^[+-][a-z0-9._-]+$'", "item_pattern = '^[+-'", "options.mattr.item_pattern"),
    ("x86_64_server.toml", '[cross]\nmcpu = "x86-64-v2"\n', "", "cross.mcpu"),
    ("imx8mplus.toml", 'target_devices = ["imx8mplus"]', 'target_devices = ["imx8qm"]', "target_devices"),
    ("refused.toml", "x86_win64 = ", 'rasp4b = "a second home"\nx86_win64 = ', "devices.rasp4b"),
]


@pytest.mark.parametrize("name, text, replacement, key", BAD_FILES)
def test_a_bad_profile_file_is_a_config_error_naming_file_and_key(tmp_path, name, text, replacement, key):
    directory = tmp_path / "profiles"
    shutil.copytree(DEFAULT_DIRECTORY, directory)
    path = directory / name
    assert text in path.read_text(), "the data file changed; update this case"
    path.write_text(path.read_text().replace(text, replacement, 1))
    with pytest.raises(ConfigError) as caught:
        load_catalog(directory)
    assert name in str(caught.value) and key in str(caught.value)


# --- detection ------------------------------------------------------------------------------
def test_every_captured_tree_has_an_expectation():
    assert {p.name for p in DEVICES.iterdir() if p.is_dir()} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_detection_on_captured_tree(name):
    board, profile, machine, cores, fragments = EXPECTED[name]
    detection = tree(name)
    assert (detection.board.name if detection.board else None) == board
    assert (detection.profile.name if detection.profile else None) == profile
    assert detection.machine == machine and detection.cores == cores
    text = "\n".join(detection.evidence + (detection.sentence,))
    for fragment in fragments:
        assert fragment in text
    if detection.profile is not None:
        assert matches(detection.profile, detection)
        assert detection.accepts[0].name == profile


def test_device_tree_strings_are_read_without_their_nul_terminator():
    models = list(DEVICES.glob("*/proc/device-tree/model")) + list(DEVICES.glob("*/sys/firmware/devicetree/base/model"))
    assert len(models) >= 14 and all(path.read_bytes().endswith(b"\x00") for path in models)
    facts = tree("rasp4b").facts   # under /sys/firmware/devicetree/base only
    assert facts.model == "Raspberry Pi 4 Model B Rev 1.4"
    assert facts.compatible == ("raspberrypi,4-model-b", "brcm,bcm2711")


def test_a_board_running_another_abi_says_what_it_compiles_for_instead():
    detection = tree("rasp3b_64bit_os")
    assert any("code is armv7l, but this userland is aarch64" in note for note in detection.notes)
    assert [p.name for p in detection.accepts] == ["linux_arm64"]


def test_a_jetson_without_l4t_is_named_in_a_note_and_compiles_for_its_cpu_only():
    detection = tree("jetson_nano_without_l4t")
    assert any("Jetson Nano (jetson_nano) identified, but not confirmed: file etc/nv_tegra_release" in n
               for n in detection.notes)
    assert "linux_arm64_nvidia" not in [p.name for p in detection.accepts]


def test_live_detection_finds_this_machine():
    import platform

    detection = detect()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine().lower())
    assert detection.live and detection.profile is not None and detection.profile.arch == machine
    assert "this Python's architecture" in detection.evidence[0]


# --- requests against this device -----------------------------------------------------------
@pytest.mark.parametrize("name, output_config, expected", [
    ("x86_64_c5", {"TargetDevice": "ml_m4"}, True),
    ("x86_64_c5", {"TargetPlatform": {"Os": "LINUX", "Arch": "X86_64"}}, True),
    ("x86_64_c5", {"TargetDevice": "rasp4b"}, False),
    ("graviton2_c6g", {"TargetDevice": "ml_m6g"}, True),
    ("jetson_nano", {"TargetDevice": "jetson_nano"}, True),
    ("jetson_nano", {"TargetDevice": "jetson_tx1"}, False),
    ("jetson_nano", {"TargetPlatform": NVIDIA}, True),
    ("jetson_nano", {"TargetPlatform": {"Os": "LINUX", "Arch": "ARM64"}}, True),
    ("rasp4b", {"TargetPlatform": NVIDIA}, False),
    ("rasp4b_32bit_userland", {"TargetDevice": "rasp4b"}, False),
    ("rasp4b_32bit_userland", {"TargetPlatform": {"Os": "LINUX", "Arch": "ARM_EABIHF"}}, True),
    ("rasp3b_64bit_os", {"TargetDevice": "rasp3b"}, False),
    ("jetson_orin", {"TargetPlatform": NVIDIA}, True),
    ("visionfive2_riscv64", {"TargetPlatform": {"Os": "LINUX", "Arch": "ARM64"}}, False),
])
def test_matches(name, output_config, expected):
    assert matches(profile_for(output_config), tree(name)) is expected


def test_a_request_for_another_device_says_what_this_device_is():
    with pytest.raises(NotThisDevice) as caught:
        check_target({"TargetDevice": "rasp3b"}, tree("rasp3b_64bit_os"))
    message = str(caught.value)
    assert message.startswith("This device is Raspberry Pi 3 Model B/B+: Raspberry Pi 3 Model B Plus Rev 1.3")
    assert "TargetDevice rasp3b (Raspberry Pi 3 Model B/B+) is not this device" in message
    assert "it compiles for TargetPlatform {Os: LINUX, Arch: ARM64}" in message
    assert "cross-compiling for another device is not enabled" in message


def test_cross_compiling_is_opt_in_and_uses_the_profile_s_own_values():
    jetson = tree("jetson_nano")
    resolution = check_target({"TargetDevice": "ml_c5"}, jetson, allow_cross=True)
    assert resolution.native is False
    assert resolution.tvm_config() == {"kind": "llvm", "mtriple": "x86_64-linux-gnu",
                                       "mcpu": "skylake-avx512", "num-cores": 4}
    with pytest.raises(RefusedTarget):   # refusals stay refusals
        check_target({"TargetDevice": "ml_inf1"}, jetson, allow_cross=True)


def test_native_targets_take_the_machine_s_values():
    nx = check_target({"TargetDevice": "jetson_xavier"}, tree("jetson_xavier_nx"), gpu=True)
    assert nx.native and nx.tvm_config()["host"]["num-cores"] == 6          # 8 when cross-compiled
    assert profile_for({"TargetDevice": "jetson_xavier"}).tvm_config()["host"]["num-cores"] == 8
    c5 = check_target({"TargetDevice": "ml_c5"}, tree("x86_64_c5")).tvm_config()
    assert c5["mcpu"] == "x86-64-v4" and c5["num-cores"] == 2              # from the captured flags
    arm64 = check_target({"TargetPlatform": {"Os": "LINUX", "Arch": "ARM64"}}, tree("rasp4b")).tvm_config()
    assert arm64["mcpu"] == "cortex-a72"                                    # the board's CPU
    nano = check_target({"TargetPlatform": NVIDIA, "CompilerOptions": json.dumps(
        {"gpu-code": "sm_53", "trt-ver": "8.2.1", "cuda-ver": "10.2"})}, tree("jetson_nano"), gpu=True).tvm_config()
    assert nano["arch"] == "sm_53" and nano["host"]["mcpu"] == "cortex-a57"


def test_a_gpu_target_is_refused_for_what_this_tvm_really_lacks():
    """TVM makes CUDA source here (test_profile_target_builds_a_small_model reads it); its runtime
    has no CUDA. A TVM built with a CUDA runtime fails this test: the refusal is then due a rethink."""
    import tvm

    with pytest.raises(Exception) as refused:
        check_target({"TargetDevice": "jetson_nano"}, tree("jetson_nano"))
    message = str(refused.value)
    assert "needs GPU code" in message and "TargetPlatform {Os: LINUX, Arch: ARM64}" in message
    assert "generates CUDA source" in message and "no CUDA runtime" in message
    assert "code generator" not in message
    assert tvm.get_global_func("target.build.cuda", allow_missing=True) is not None
    assert not tvm.runtime.enabled("cuda")


def test_an_nvidia_platform_request_must_name_this_jetson_s_gpu():
    options = json.dumps({"gpu-code": "sm_72", "trt-ver": "8.2.1", "cuda-ver": "10.2"})
    with pytest.raises(Exception, match="its GPU is sm_53, so CompilerOptions gpu-code 'sm_72' does not fit it"):
        check_target({"TargetPlatform": NVIDIA, "CompilerOptions": options}, tree("jetson_nano"), gpu=True)


def test_the_api_hook_answers_with_validation_exception():
    check = api_target_check(tree("jetson_tx2"), gpu=True)
    check({"TargetDevice": "jetson_tx2", "CompilerOptions": "{'gpu-code': 'sm_62'}"})
    for output_config, words in [
        ({"TargetDevice": "x86_win32"}, "Windows host"),
        ({"TargetDevice": "jetson_nano"}, "This device is NVIDIA Jetson TX2"),
        ({"TargetDevice": "jetson_tx2", "CompilerOptions": '{"gpu-code": "sm_53"}'}, "it accepts sm_62"),
    ]:
        with pytest.raises(ValidationException, match=words):
            check(output_config)


# --- CompilerOptions ------------------------------------------------------------------------
@pytest.mark.parametrize("options", [
    {"mcpu": "cortex-a53", "mattr": ["+neon", "+crc"]},
    '{"mcpu": "cortex-a53", "mattr": "+neon,+crc"}',
    "{'mcpu': 'cortex-a53', 'mattr': ['+neon', '+crc']}",       # the quoting Neo's docs show
])
def test_compiler_options_override_the_profile_s_cpu(options):
    profile = profile_for({"TargetDevice": "rasp4b"})
    target = profile.tvm_target(options)
    assert str(target.attrs["mcpu"]) == "cortex-a53"
    assert [str(m) for m in target.attrs["mattr"]] == ["+neon", "+crc"]
    assert str(target.attrs["mtriple"]) == "aarch64-linux-gnu" and int(target.attrs["num-cores"]) == 4


def test_gpu_code_sets_the_cuda_architecture_and_its_alias_is_accepted():
    profile = profile_for({"TargetPlatform": NVIDIA})
    target = profile.tvm_target({"gpu_code": "sm_62", "trt-ver": "6.0.1", "cuda-ver": "10.0"})
    assert str(target.attrs["arch"]) == "sm_62" and target.kind.name == "cuda"
    assert str(target.host.attrs["mtriple"]) == "aarch64-linux-gnu"


@pytest.mark.parametrize("device, options, words", [
    ("rasp4b", {"gpu-code": "sm_53"}, "CompilerOptions: gpu-code is not accepted for TargetDevice rasp4b"),
    ("jetson_nano", {"ANDROID_PLATFORM": 29}, "CompilerOptions: ANDROID_PLATFORM is not accepted"),
    ("jetson_nano", {"gpu-code": "sm_62"}, "gpu-code 'sm_62' is not accepted for TargetDevice jetson_nano"),
    ("jetson_nano", {"gpu-code": "sm_53", "gpu_code": "sm_53"}, "the same option"),
    ("jetson_nano", {"trt-ver": "seven"}, "CompilerOptions: trt-ver 'seven' is not valid"),
    ("rasp3b", {"mattr": ["neon"]}, "CompilerOptions: mattr must be a list"),
    ("rasp3b", {"dtype": "int8"}, "CompilerOptions: dtype 'int8' is not accepted"),
    ("rk3399", {"layout": "NCWH"}, "CompilerOptions: layout 'NCWH'"),
    ("ml_c5", {"mcpu": 5}, "CompilerOptions: mcpu must be a non-empty string"),
    ("ml_c5", "[1, 2]", "CompilerOptions must be a JSON object"),
    ("ml_c5", "mcpu=skylake", "CompilerOptions must be a JSON object"),
    ("ml_c5", {"tuning_seconds": -1}, "CompilerOptions: tuning_seconds must be a whole number from 0"),
    ("ml_c5", {"tuning_seconds": "ten"}, "tuning_seconds must be a whole number"),
    ("ml_c5", {"tuning_trials": 2.5}, "tuning_trials must be a whole number"),
    ("ml_c5", {"tuning_trials": True}, "tuning_trials must be a whole number"),
    ("ml_c5", {"tuning_trials": 10**7}, "tuning_trials must be a whole number from 0 to 1000000"),
    ("ml_c5", {"tuning": 5}, "it accepts mcpu, mattr, dtype, layout, tuning_seconds, tuning_trials"),
])
def test_invalid_compiler_options_are_rejected_naming_the_key(device, options, words):
    with pytest.raises(OptionError) as caught:
        profile_for({"TargetDevice": device}).parse_options(options)
    assert words in str(caught.value)


@pytest.mark.parametrize("device", ["ml_c5", "rasp4b", "jetson_nano"])
def test_every_profile_takes_the_tuning_budget_options(device):
    options = profile_for({"TargetDevice": device}).parse_options(
        '{"tuning_seconds": "900", "tuning_trials": 2000' + (', "gpu-code": "sm_53"}' if device == "jetson_nano" else "}"))
    assert options["tuning_seconds"] == 900 and options["tuning_trials"] == 2000


def test_an_nvidia_platform_needs_what_neo_requires():
    with pytest.raises(OptionError, match="must give trt-ver, cuda-ver"):
        profile_for({"TargetPlatform": NVIDIA}).parse_options({"gpu-code": "sm_53"})


@pytest.mark.parametrize("options, words", [
    ({"mcpu": "cortex-z99"}, "CompilerOptions: mcpu 'cortex-z99' is not a CPU LLVM knows for aarch64-linux-gnu"),
    ({"mattr": ["+neon", "+warp-drive"]}, "CompilerOptions: mattr +warp-drive: not a feature LLVM knows"),
])
def test_names_llvm_does_not_know_are_rejected_not_ignored(options, words):
    # TVM alone would only warn and build for a generic CPU.
    with pytest.raises(OptionError) as caught:
        profile_for({"TargetDevice": "imx8mplus"}).tvm_target(options)
    assert words in str(caught.value)


# --- neo-agent detect -----------------------------------------------------------------------
def test_cli_detect_prints_profile_evidence_and_target(capsys):
    from agent.cli import main

    assert main(["detect", "--root", str(DEVICES / "jetson_tx2")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("profile   jetson_tx2  (NVIDIA Jetson TX2)")
    assert '/proc/device-tree/compatible has "nvidia,tegra186"' in out
    assert '"arch": "sm_62"' in out and '"mcpu": "cortex-a57"' in out
    assert main(["detect", "--json", "--root", str(DEVICES / "visionfive2_riscv64")]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["profile"] is None and report["machine"] == "riscv64"
    assert main(["detect", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["target"]["num-cores"] >= 1


# --- each profile's target builds a small model ---------------------------------------------
E_MACHINE = {"x86_64": 62, "aarch64": 183, "armv7l": 40}
ELF_CLASS = {"x86_64": 2, "aarch64": 2, "armv7l": 1}
TAG_ABI_VFP_ARGS = 28      # in .ARM.attributes: 1 = floats passed in VFP registers (hard float)


def small_model():
    """relu(conv3x3(x) + b) flattened, times m, with its weights as constants (NCHW, as ONNX gives it)."""
    from tvm import relax

    rng = np.random.default_rng(3)
    weights = {"w": rng.standard_normal((8, 4, 3, 3)).astype(np.float32),
               "b": rng.standard_normal((1, 8, 1, 1)).astype(np.float32),
               "m": rng.standard_normal((8 * 6 * 6, 10)).astype(np.float32)}
    x = relax.Var("x", relax.TensorType((1, 4, 6, 6), "float32"))
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            conv = builder.emit(relax.op.nn.conv2d(x, relax.const(weights["w"]), padding=[1, 1, 1, 1]))
            hidden = builder.emit(relax.op.nn.relu(relax.op.add(conv, relax.const(weights["b"]))))
            flat = builder.emit(relax.op.reshape(hidden, (1, 8 * 6 * 6)))
            out = builder.emit_output(relax.op.matmul(flat, relax.const(weights["m"])))
        builder.emit_func_output(out)
    return builder.get(), weights


def reference(x: np.ndarray, weights: dict) -> np.ndarray:
    """The model in numpy: the convolution as nine shifted matrix products."""
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    conv = np.zeros((1, 8, 6, 6), np.float32)
    for i in range(3):
        for j in range(3):
            conv += np.einsum("oc,nchw->nohw", weights["w"][:, :, i, j], padded[:, :, i:i + 6, j:j + 6])
    return np.maximum(conv + weights["b"], 0).reshape(1, -1) @ weights["m"]


def build(target):
    """The agent's CPU compile (layout, fusion, rule-made schedules); TVM's GPU pipeline for CUDA."""
    import tvm

    from agent.compile import build as agent_build

    module, _ = small_model()
    if target.kind.name == "cuda":
        return tvm.compile(module, target=target)
    optimized, _ = agent_build.optimize(module, target)
    return agent_build.build(optimized, target)


def elf_objects(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as archive:
        members = {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}
    assert members and all(name.endswith(".o") for name in members), sorted(members)
    return members


def arm_attributes(obj: bytes) -> dict[int, int | str]:
    """The aeabi file attributes of a 32-bit ARM object (its .ARM.attributes section)."""
    shoff, = struct.unpack_from("<I", obj, 32)
    shentsize, shnum = struct.unpack_from("<HH", obj, 46)
    for index in range(shnum):
        sh_type, = struct.unpack_from("<I", obj, shoff + index * shentsize + 4)
        if sh_type == 0x70000003:    # SHT_ARM_ATTRIBUTES
            offset, size = struct.unpack_from("<II", obj, shoff + index * shentsize + 16)
            return _parse_aeabi(obj[offset:offset + size])
    return {}


def _parse_aeabi(data: bytes) -> dict[int, int | str]:
    stream, attributes = io.BytesIO(data[1:]), {}      # data[0] is the format version, "A"

    def uleb() -> int:
        value = shift = 0
        while True:
            byte = stream.read(1)[0]
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    def string() -> str:
        chars = b""
        while (char := stream.read(1)) != b"\x00":
            chars += char
        return chars.decode()

    section_end = 1 + struct.unpack("<I", stream.read(4))[0] - 1
    if string() != "aeabi":
        return {}
    while stream.tell() < section_end:
        tag, size = stream.read(1)[0], struct.unpack("<I", stream.read(4))[0]
        end = stream.tell() + size - 5
        while tag == 1 and stream.tell() < end:           # file-scope attributes
            key = uleb()
            attributes[key] = string() if key in (4, 5, 67) or (key > 32 and key % 2) else uleb()
        stream.seek(end)
    return attributes


@pytest.mark.parametrize("name", sorted(load_profiles()))
def test_profile_target_builds_a_small_model(name, tmp_path):
    """Run here when the profile is this machine's; else the .tar of objects TVM writes without a
    linker, whose ELF headers must be the profile's architecture.

    Stated rather than skipped: this TVM (the PyPI wheel) has no CUDA runtime, so a CUDA
    profile's kernels are CUDA C source in the library (the Jetson's CUDA compiles them when it
    loads it) and no PTX or cubin for its sm_xx can be made here; the host side is checked fully.
    """
    import tvm
    from tvm import relax

    from agent.compile import build as agent_build

    profile = load_profiles()[name]
    live = detect()
    native = matches(profile, live)
    options = NVIDIA_OPTIONS if profile.name == "linux_arm64_nvidia" else None
    target = profile.tvm_target(options, live if native else None)
    executable = build(target)

    if native and target.kind.name == "llvm":
        library = tvm.runtime.load_module(str(agent_build.export(executable, tmp_path)))
        vm = relax.VirtualMachine(library, tvm.cpu())
        x = np.random.default_rng(5).standard_normal((1, 4, 6, 6)).astype(np.float32)
        got = vm["main"](tvm.runtime.tensor(x)).numpy()
        np.testing.assert_allclose(got, reference(x, small_model()[1]), rtol=1e-4, atol=1e-4)
        return

    path = tmp_path / "model.tar"
    executable.export_library(str(path))
    objects = elf_objects(path)
    for member, data in objects.items():
        assert data[:4] == b"\x7fELF", member
        assert data[4] == ELF_CLASS[profile.arch], member
        assert struct.unpack_from("<H", data, 18)[0] == E_MACHINE[profile.arch], member
        if profile.arch == "armv7l":
            assert arm_attributes(data).get(TAG_ABI_VFP_ARGS) == 1, f"{member} is not hard float"
    if target.kind.name == "cuda":
        kernels = [m for m in _modules(executable.mod) if m.kind == "cuda"]
        assert len(kernels) == 1
        assert b"_kernel" in objects["devc.o"]          # the device code travels in devc.o
        if not tvm.runtime.enabled("cuda"):
            assert 'extern "C" __global__' in kernels[0].inspect_source()


def _modules(module):
    yield module
    for imported in module.imports:
        yield from _modules(imported)


def test_an_installed_agent_finds_the_profiles_its_wheel_carries(tmp_path):
    """A non-editable install (systemd/install.sh) has no source tree: the wheel ships the
    profiles as data files under sys.prefix, where the catalog looks when there is no checkout."""
    import subprocess
    import sys
    import zipfile

    from agent.device import catalog

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path), str(catalog.SOURCE_DIRECTORY.parent)], check=True, timeout=300)
    wheel = next(tmp_path.glob("neo_edge_agent-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n.rsplit("/", 1)[1] for n in names if "/data/share/neo-edge-agent/device_profiles/" in n}
    assert shipped == {p.name for p in catalog.SOURCE_DIRECTORY.iterdir() if p.suffix in (".toml", ".md")}
    assert str(catalog.INSTALLED_DIRECTORY).endswith("share/neo-edge-agent/device_profiles")


def test_the_profiles_directory_can_be_named(tmp_path, monkeypatch):
    import shutil

    from agent.device import catalog

    shutil.copytree(catalog.SOURCE_DIRECTORY, tmp_path / "profiles")
    monkeypatch.setenv(catalog.DIRECTORY_VARIABLE, str(tmp_path / "profiles"))
    assert catalog.default_directory() == tmp_path / "profiles"
    assert catalog.load_catalog().directory == tmp_path / "profiles"
