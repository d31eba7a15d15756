"""The app model config contract: form validation messages (Dify's words), prompt rendering, /parameters."""

import pytest
from pydantic import ValidationError

from shared.app_config import parameters_view, parse_model_config, render_prompt, validate_inputs

BASE = {"model": {"provider": "openai", "name": "gpt-4o-mini"}}


def cfg(**kw):
    return parse_model_config({**BASE, **kw})


FORM = [
    {"text-input": {"label": "Name", "variable": "name", "required": True, "max_length": 5}},
    {"paragraph": {"label": "Bio", "variable": "bio"}},
    {"select": {"label": "Tier", "variable": "tier", "options": ["free", "pro"]}},
    {"number": {"label": "Age", "variable": "age", "default": 30}},
]


@pytest.mark.parametrize(("inputs", "message"), [
    ({}, "name is required in input form"),
    ({"name": ""}, "name is required in input form"),
    ({"name": "abcdef"}, "name in input form must be less than 5 characters"),
    ({"name": "ab", "tier": "gold"}, "tier in input form must be one of the following: ['free', 'pro']"),
    ({"name": "ab", "age": "old"}, "age in input form must be a valid number"),
    ({"name": "ab", "age": True}, "age in input form must be a valid number"),
    ({"name": 5}, "name in input form must be a string"),
])
def test_invalid_inputs_use_difys_messages(inputs, message) -> None:
    with pytest.raises(ValueError) as e:
        validate_inputs(cfg(user_input_form=FORM), inputs)
    assert str(e.value) == message


def test_valid_inputs_are_cleaned_with_defaults() -> None:
    out = validate_inputs(cfg(user_input_form=FORM), {"name": "ab", "tier": "pro", "age": "41", "extra": 1})
    assert out == {"name": "ab", "bio": "", "tier": "pro", "age": 41}
    assert validate_inputs(cfg(user_input_form=FORM), {"name": "ab"})["age"] == 30


def test_render_prompt_leaves_unknown_and_detemplates_values() -> None:
    assert render_prompt("Hi {{name}}, {{unknown}}", {"name": "{{unknown}}"}) == "Hi {unknown}, {{unknown}}"
    assert render_prompt("{{a}}{{a}}", {"a": 1}) == "11"


@pytest.mark.parametrize("form", [
    [{"select": {"variable": "x"}}],  # select without options
    [{"text-input": {"variable": "1bad"}}],
    [{"text-input": {"variable": "a"}}, {"paragraph": {"variable": "a"}}],
    [{"carrier-pigeon": {"variable": "a"}}],
    [{"text-input": {"variable": "a"}, "paragraph": {"variable": "b"}}],
])
def test_bad_forms_are_rejected(form) -> None:
    with pytest.raises(ValidationError):
        cfg(user_input_form=form)


def test_model_is_required() -> None:
    with pytest.raises(ValidationError):
        parse_model_config({"pre_prompt": "x"})


def test_parameters_view_has_difys_defaults() -> None:
    view = parameters_view(cfg(user_input_form=FORM, opening_statement="Hello", suggested_questions=["a?"]))
    assert view["opening_statement"] == "Hello" and view["suggested_questions"] == ["a?"]
    assert view["speech_to_text"] == {"enabled": False}
    assert view["retriever_resource"] == {"enabled": True}
    assert view["file_upload"]["image"]["number_limits"] == 3
    assert view["system_parameters"]["file_size_limit"] == 15
    assert view["user_input_form"][0] == {"text-input": {"label": "Name", "variable": "name", "required": True,
                                                        "max_length": 5, "options": []}}
