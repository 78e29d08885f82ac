"""DataInputConfig: the accepted forms, derivation, and every InputConfiguration error."""
from __future__ import annotations

import json

import pytest

from agent.compile import datainput
from agent.compile.datainput import TensorSpec
from agent.errors import ClientError

IMAGE = TensorSpec("image", ("N", 3, "H", "W"), "float32")
FIXED = TensorSpec("scale", (1, 2), "float32")
BATCH_ONLY = TensorSpec("x", ("?", 3, 224, 224), "float32")


def reason(excinfo) -> str:
    return excinfo.value.reason


# --- accepted forms ------------------------------------------------------------------------
def test_dict_form_in_model_order():
    shapes = datainput.parse('{"scale": [1, 2], "image": [2, 3, 48, 192]}', [IMAGE, FIXED])
    assert list(shapes) == ["image", "scale"]
    assert shapes == {"image": [2, 3, 48, 192], "scale": [1, 2]}


def test_list_of_shapes_matched_in_order():
    assert datainput.parse("[[1, 3, 32, 32], [1, 2]]", [IMAGE, FIXED]) == {"image": [1, 3, 32, 32], "scale": [1, 2]}


def test_bare_shape_for_a_one_input_model():
    assert datainput.parse("[1, 3, 64, 64]", [IMAGE]) == {"image": [1, 3, 64, 64]}


def test_an_input_left_out_is_derived_when_no_guess_is_needed():
    assert datainput.parse('{"image": [1, 3, 8, 8]}', [IMAGE, FIXED, BATCH_ONLY]) == {
        "image": [1, 3, 8, 8], "scale": [1, 2], "x": [1, 3, 224, 224]}


# --- errors: each names the input and the problem --------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("{not json", "is not valid JSON"),
    ("{}", "DataInputConfig is empty"),
    ('"image"', "must be a JSON object of input name to shape"),
    ("[]", "must be a JSON object of input name to shape"),
])
def test_malformed_config(text, expected):
    with pytest.raises(ClientError) as excinfo:
        datainput.parse(text, [IMAGE])
    assert reason(excinfo).startswith("ClientError: InputConfiguration: ")
    assert expected in reason(excinfo)


def test_unknown_input_lists_the_models_inputs():
    with pytest.raises(ClientError) as excinfo:
        datainput.parse('{"data": [1, 3, 224, 224]}', [IMAGE, FIXED])
    assert "'data', which the model does not have" in reason(excinfo)
    assert "image ['N', 3, 'H', 'W'], scale [1, 2]" in reason(excinfo)


def test_wrong_rank():
    with pytest.raises(ClientError) as excinfo:
        datainput.parse('{"image": [3, 224, 224]}', [IMAGE])
    assert "input 'image' has rank 4 in the model" in reason(excinfo)
    assert "gives 3 dims" in reason(excinfo)


@pytest.mark.parametrize("dim", [0, -1])
def test_non_positive_dims(dim):
    with pytest.raises(ClientError) as excinfo:
        datainput.parse(json.dumps({"image": [1, 3, dim, 8]}), [IMAGE])
    assert "input 'image' axis 2: dims must be positive" in reason(excinfo)


def test_dim_contradicting_a_fixed_model_dim():
    with pytest.raises(ClientError) as excinfo:
        datainput.parse('{"image": [1, 1, 48, 192]}', [IMAGE])
    assert "input 'image' axis 1: the model fixes this dim to 3" in reason(excinfo)


def test_absurdly_large_input_is_refused():
    with pytest.raises(ClientError) as excinfo:
        datainput.parse('{"image": [1, 3, 65536, 65536]}', [IMAGE])
    assert "input 'image'" in reason(excinfo) and "more than the 2147483648 allowed" in reason(excinfo)


@pytest.mark.parametrize("shape", ["[1, 3, 2.5, 8]", "[1, 3, true, 8]", '[1, 3, "H", 8]', '"1,3,8,8"'])
def test_dims_must_be_integers(shape):
    with pytest.raises(ClientError) as excinfo:
        datainput.parse('{"image": %s}' % shape, [IMAGE])
    assert "the shape for input 'image' must be a list of integers" in reason(excinfo)


def test_list_of_shapes_must_match_the_input_count():
    with pytest.raises(ClientError) as excinfo:
        datainput.parse("[[1, 3, 8, 8]]", [IMAGE, FIXED])
    assert "lists 1 shapes but the model has 2 inputs" in reason(excinfo)


def test_bare_shape_needs_a_one_input_model():
    with pytest.raises(ClientError) as excinfo:
        datainput.parse("[1, 3, 8, 8]", [IMAGE, FIXED])
    assert "single shape but the model has 2 inputs" in reason(excinfo)


def test_left_out_input_with_dynamic_dims_is_asked_for():
    with pytest.raises(ClientError) as excinfo:
        datainput.parse('{"scale": [1, 2]}', [IMAGE, FIXED])
    assert "input 'image' has dynamic axis 2 ('H')" in reason(excinfo)
    assert "DataInputConfig does not give its shape" in reason(excinfo)


# --- derivation ------------------------------------------------------------------------------
def test_derive_keeps_fixed_dims_and_sets_the_batch_to_one():
    shapes = datainput.derive([BATCH_ONLY, FIXED])
    assert shapes == {"x": [1, 3, 224, 224], "scale": [1, 2]}
    assert json.loads(datainput.to_json(shapes)) == shapes
    assert datainput.to_json(shapes) == '{"x": [1, 3, 224, 224], "scale": [1, 2]}'


def test_derive_refuses_other_dynamic_dims_naming_input_and_axis():
    with pytest.raises(ClientError) as excinfo:
        datainput.derive([IMAGE])
    text = reason(excinfo)
    assert text.startswith("ClientError: InputConfiguration: input 'image' has dynamic axis 2 ('H')")
    assert "DataInputConfig is absent" in text
    assert '{"image": [1, 3, 224, 224]}' in text  # an example the user can paste


def test_tensor_spec_round_trip():
    assert TensorSpec.from_dict(IMAGE.to_dict()) == IMAGE
    assert not IMAGE.is_static and FIXED.is_static
