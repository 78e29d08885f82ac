"""agent.runtime: loading artifacts (folder and .tar.gz), input checks, the command line."""
from __future__ import annotations

import subprocess
import sys
import tarfile

import numpy as np
import pytest

from agent import runtime
from agent.runtime import ArtifactError, InputError
from agent.samples import make_sample_model
from agent.storage.archive import pack
from tests.compile.helpers import compile_artifact, onnxruntime_outputs


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(onnx path, artifact folder, artifact .tar.gz) for the sample model, compiled once."""
    root = tmp_path_factory.mktemp("runtime")
    onnx_path = make_sample_model(root / "model.onnx")
    folder = compile_artifact(onnx_path, root / "artifact")
    archive = pack({"model.so": folder / "model.so", "metadata.json": folder / "metadata.json"},
                   root / "model-LINUX_X86_64.tar.gz")
    return onnx_path, folder, archive


@pytest.fixture(scope="module")
def model(built):
    return runtime.load(built[2])


@pytest.fixture
def image():
    return np.random.default_rng(3).random((1, 3, 64, 64), dtype=np.float32)


@pytest.mark.parametrize("which", [1, 2])
def test_load_folder_or_archive_and_match_onnxruntime(built, image, which):
    loaded = runtime.load(built[which])
    assert loaded.inputs == [{"name": "input", "shape": [1, 3, 64, 64], "dtype": "float32"}]
    assert [o["name"] for o in loaded.outputs] == ["logits", "probabilities"]
    got = loaded.run({"input": image})
    for g, w in zip(got, onnxruntime_outputs(built[0], {"input": image})):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    assert "CompiledModel(" in repr(loaded)


def test_an_artifact_of_object_files_is_linked_when_it_is_loaded(tmp_path, image):
    """A cross-compiled artifact ships model.tar; the device's C compiler links it at load."""
    onnx_path = make_sample_model(tmp_path / "model.onnx")
    folder = compile_artifact(onnx_path, tmp_path / "artifact", linkable=False)
    assert (folder / "model.tar").is_file() and not (folder / "model.so").exists()
    archive = pack({"model.tar": folder / "model.tar", "metadata.json": folder / "metadata.json"},
                   tmp_path / "model-rasp4b.tar.gz")
    got = runtime.load(archive).run({"input": image})
    for g, w in zip(got, onnxruntime_outputs(onnx_path, {"input": image})):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_feed_as_list_or_single_array(model, image):
    by_name = model.run({"input": image})
    for other in (model.run([image]), model.run(image)):
        assert all(np.array_equal(a, b) for a, b in zip(by_name, other))


def test_non_contiguous_input_is_accepted(model, image):
    fortran = np.asfortranarray(image)  # same values, another memory order
    assert not fortran.flags["C_CONTIGUOUS"]
    assert np.array_equal(model.run([fortran])[0], model.run([image])[0])


@pytest.mark.parametrize("feed, words", [
    (lambda x: {"image": x}, "unknown input 'image'; the model's inputs are ['input']"),
    (lambda x: {}, "input 'input' is missing"),
    (lambda x: [x, x], "got 2 inputs, the model takes 1"),
    (lambda x: {"input": x[:, :, :32]}, "input 'input' has shape [1, 3, 32, 64], the model was compiled for [1, 3, 64, 64]"),
    (lambda x: {"input": x.astype(np.float64)}, "input 'input' has dtype float64, the model takes float32"),
])
def test_input_checks_name_the_problem(model, image, feed, words):
    with pytest.raises(InputError) as excinfo:
        model.run(feed(image))
    assert words in str(excinfo.value)


def test_folder_without_files(tmp_path):
    with pytest.raises(ArtifactError, match="has no model.so"):
        runtime.load(tmp_path)


def test_archive_without_metadata(built, tmp_path):
    archive = tmp_path / "bad.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(built[1] / "model.so", arcname="model.so")
    with pytest.raises(ArtifactError, match="bad.tar.gz has no metadata.json"):
        runtime.load(archive)


def test_not_an_archive(tmp_path):
    path = tmp_path / "x.tar.gz"
    path.write_bytes(b"nope")
    with pytest.raises(ArtifactError, match="not a readable .tar.gz artifact"):
        runtime.load(path)


def test_unreadable_metadata(built, tmp_path):
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "model.so").write_bytes((built[1] / "model.so").read_bytes())
    (folder / "metadata.json").write_text('{"inputs": [{"name": "x"}], "outputs": []}')
    with pytest.raises(ArtifactError, match="metadata.json is unreadable"):
        runtime.load(folder)


def test_missing_path(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        runtime.load(tmp_path / "nothing.tar.gz")


# --- command line ---------------------------------------------------------------------------------
def test_cli_with_an_input_file(built, image, tmp_path, capsys):
    npy = tmp_path / "image.npy"
    np.save(npy, image)
    assert runtime.main([str(built[2]), "--input", f"input={npy}", "--iterations", "3"]) == 0
    out = capsys.readouterr().out
    assert "input  input: shape [1, 3, 64, 64] float32" in out
    assert "output logits: shape [1, 10] float32" in out
    assert "output probabilities: shape [1, 10] float32" in out
    assert "latency over 3 runs: p50" in out


@pytest.mark.parametrize("args, words", [
    (["--input", "image=x.npy"], "--input 'image': the model's inputs are ['input']"),
    (["--input", "input"], "expected NAME=FILE.npy"),
    (["--input", "input=/no/such/file.npy"], "No such file"),
])
def test_cli_bad_inputs_exit_2(built, capsys, args, words):
    assert runtime.main([str(built[1]), *args]) == 2
    assert words in capsys.readouterr().err


def test_cli_as_a_module_with_random_inputs(built):
    done = subprocess.run([sys.executable, "-m", "agent.runtime", str(built[2]), "--iterations", "2",
                           "--threads", "1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "output probabilities: shape [1, 10] float32" in done.stdout
    assert "latency over 2 runs" in done.stdout
