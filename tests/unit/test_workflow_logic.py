"""Pure workflow-node logic: {{#...#}} templates, sandboxed Jinja2 with runaway limits, if-else operators
and case selection, list-operator, variable-aggregator and output/parameter type coercion."""

from __future__ import annotations

from typing import Any

import pytest

from services.runtime.workflow.logic import (
    MAX_CALLS,
    MAX_RANGE,
    MAX_STEPS,
    MISSING,
    TEMPLATE_RE,
    TemplateError,
    aggregate,
    coerce,
    compare,
    evaluate_cases,
    list_operator,
    render_jinja,
    render_template,
    resolve,
)

POOL: dict[str, dict[str, Any]] = {
    "start": {
        "name": "张三", "age": 30, "age_s": "30", "price": 9.5, "bad_num": "abc",
        "tags": ["a", "b", "中文"], "nums": [1, 2, 3], "flags": [True, False],
        "empty_s": "", "empty_l": [], "none": None, "flag": True, "off": False,
        "obj": {"k": {"deep": "v"}, "list": [{"x": 1}, {"x": 2}], "nil": None},
        "files": [{"extension": "pdf", "size": 10}, {"extension": ".png", "size": 20}],
        "tpl": "{{#sys.query#}}",
    },
    "sys": {"query": "hello world"},
}


def get(selector: list[str]) -> Any:
    assert len(selector) <= 2, "logic must only ask the getter for [node, var]"
    node = POOL[selector[0]]
    return node[selector[1]]  # KeyError when missing, as the engine's getter


def one(var: str | list[str], op: str, value: Any = None) -> bool:
    """Evaluate a single-condition if-else; True when its case is selected."""
    selector = var if isinstance(var, list) else ["start", var]
    data = {"cases": [{"case_id": "c1", "logical_operator": "and", "conditions": [
        {"id": "x", "variable_selector": selector, "comparison_operator": op, "value": value}]}]}
    handle, result, _ = evaluate_cases(data, get)
    assert (handle == "c1") is result
    return result


# -- {{#...#}} templates ------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "expected"), [
    ("Hi {{#start.name#}}!", "Hi 张三!"),
    ("{{#start.age#}}|{{#start.price#}}|{{#start.flag#}}|{{#start.off#}}", "30|9.5|true|false"),
    ("[{{#start.none#}}]", "[]"),
    ("[{{#start.nope#}}][{{#nonode.x#}}]", "[][]"),  # missing variables render empty
    ("{{#start.tags#}}", '["a", "b", "中文"]'),  # CJK stays readable
    ("{{#start.obj.k#}}", '{"deep": "v"}'),
    ("{{#start.obj.k.deep#}}", "v"),  # paths index into dicts
    ("{{#start.obj.k.missing#}}|{{#start.name.x#}}", "|"),  # a missing path is a missing variable
    ("{{#start.empty_l#}}{{#start.empty_s#}}", "[]"),
    ("{{#sys.query#}} / {{#sys.query#}}", "hello world / hello world"),
    ("{{#start.tpl#}}", "{{#sys.query#}}"),  # values are not re-expanded
    ("{{#start#}} {{ #start.name# }} {{#start.1x#}}", "{{#start#}} {{ #start.name# }} {{#start.1x#}}"),
    ("无变量", "无变量"),
])
def test_render_template(text: str, expected: str) -> None:
    assert render_template(text, get) == expected


def test_template_regex_depth_limit() -> None:
    assert TEMPLATE_RE.fullmatch("{{#n." + ".".join(["a"] * 10) + "#}}")
    assert not TEMPLATE_RE.fullmatch("{{#n." + ".".join(["a"] * 11) + "#}}")
    assert not TEMPLATE_RE.fullmatch("{{#n-1.a#}}")


def test_resolve_lists_by_index_and_missing_paths() -> None:
    assert resolve(["start", "obj", "list", "1", "x"], get) == 2
    assert resolve(["start", "obj", "list", 0, "x"], get) == 1
    assert resolve(["start", "obj", "nil"], get) is None
    for selector in (["start", "obj", "list", "5"], ["start", "obj", "list", "-1"], ["start", "tags", "x"],
                     ["start", "age", "x"], ["start", "obj", "zz"], ["start", "zz"], ["nonode", "x"]):
        with pytest.raises(KeyError):
            resolve(selector, get)


# -- Jinja2 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("template", "variables", "expected"), [
    ("{{ a }}-{{ missing }}-{{ d.x }}", {"a": "你好", "d": {}}, "你好--"),  # undefined → ""
    ("{{ '<b>' }}", {}, "<b>"),  # autoescape off
    ("{% for t in tags %}{{ loop.index }}:{{ t }}{% if not loop.last %},{% endif %}{% endfor %}",
     {"tags": ["甲", "乙"]}, "1:甲,2:乙"),
    ("{% for i in [] %}x{% else %}none{% endfor %}", {}, "none"),
    ("{% for k, v in d|dictsort %}{{ k }}={{ v }};{% endfor %}", {"d": {"b": 2, "a": 1}}, "a=1;b=2;"),
    ("{% set ns = namespace(c=0) %}{% for i in range(5) %}{% set ns.c = ns.c + i %}{% endfor %}{{ ns.c }}",
     {}, "10"),
    ("{% macro m(x) %}<{{ x }}>{% endmacro %}{{ m(1) }}", {}, "<1>"),
    # the size-guarded operations still work at ordinary sizes
    ("{{ '-' * 3 }}|{{ 'a' ~ 'b' ~ 1 }}|{{ '%05d' % 42 }}|{{ '{:>3}'.format('x') }}|{{ 2 ** 10 }}", {},
     "---|ab1|00042|  x|1024"),
    ("{{ 'ab'|center(6) }}|{{ [1, 2]|join(', ') }}|{{ 'aXb'|replace('X', 'Y') }}|{{ '%s!'|format('hi') }}",
     {}, "  ab  |1, 2|aYb|hi!"),
    ("{{ items|join(',', attribute='n') }}|{{ ','.join(['p', 'q']) }}|{{ 'x'.rjust(3) }}",
     {"items": [{"n": 1}, {"n": 2}]}, "1,2|p,q|  x"),
    ("{{ [1, 2, 3]|batch(2)|list }}|{{ 'a b'|wordwrap(1) }}|{{ {'k': '中'}|tojson }}", {},
     '[[1, 2], [3]]|a\nb|{"k": "\\u4e2d"}'),
    ("{% autoescape true %}{{ '<b>' ~ x }}{% endautoescape %}", {"x": "<i>"}, "&lt;b&gt;&lt;i&gt;"),
])
def test_render_jinja(template: str, variables: dict[str, Any], expected: str) -> None:
    assert render_jinja(template, variables) == expected


@pytest.mark.parametrize(("template", "variables", "message"), [
    ("{{ ''.__class__ }}", {}, "unsafe"),
    ("{{ ''.__class__.__mro__ }}", {}, "unsafe"),
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", {}, "unsafe"),
    ("{{ x.__class__.__base__.__subclasses__() }}", {"x": 1}, "unsafe"),
    ("{{ cycler.__init__.__globals__ }}", {}, "unsafe"),
    ("{{ lipsum.__globals__['os'] }}", {}, "unsafe"),
    ("{{ self._TemplateReference__context }}", {}, "unsafe"),
    ("{{ '{0.__class__}'.format('') }}", {}, "unsafe"),
    ("{{ x.append(1) }}", {"x": []}, "unsafe"),  # immutable sandbox
    ("{{ nope.attr }}", {}, "undefined"),
    ("{{ d.a.b }}", {"d": {}}, "undefined"),
    ("{% if %}", {}, "syntax error"),
    ("{% for x in y %}", {}, "syntax error"),
    ("{{ x|no_such_filter }}", {}, "no_such_filter"),
    ("{{ 1 / 0 }}", {}, "ZeroDivisionError"),
])
def test_render_jinja_errors(template: str, variables: dict[str, Any], message: str) -> None:
    with pytest.raises(TemplateError) as info:
        render_jinja(template, variables)
    assert message.lower() in str(info.value).lower()
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(("template", "variables", "message"), [
    ("{% for i in range(10**9) %}x{% endfor %}", {}, "range"),
    (f"{{% for i in range({MAX_RANGE + 1}) %}}{{% endfor %}}", {}, "range"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", {}, "iterations"),
    ("{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}", {"s": "x" * 100_000}, "iterations"),
    ("{% macro d(n) %}{% if n %}{{ d(n-1) }}{{ d(n-1) }}{% endif %}{% endmacro %}{{ d(40) }}", {}, "calls"),
    ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", {}, "Recursion"),
    ("{% for i in range(100000) %}xxxxxxxxxx{% endfor %}", {}, "output exceeds"),
    ("{{ x }}{{ x }}", {"x": "y" * 300_000}, "output exceeds"),
    ("{{ 'a' * 10**10 }}", {}, "repetition"),
    ("{{ [0] * 10**10 }}", {}, "repetition"),
    ("{{ 2 ** 100000000 }}", {}, "too large"),
    ("{{ '%0999999999d' % 1 }}", {}, "width"),
    ("{{ '%*d' % (10, 1) }}", {}, "'*'"),
    ("{{ '{:>999999999}'.format(1) }}", {}, "width"),
    ("{{ '{:{w}}'.format(1, w=5) }}", {}, "nested"),
    ("{{ '%0999999999d'|format(1) }}", {}, "width"),
    ("{{ 'x'|center(999999999) }}", {}, "center"),
    ("{{ 'x\\ny'|indent(999999999) }}", {}, "indent"),
    ("{{ 'x'.ljust(999999999) }}", {}, "ljust"),
    ("{{ 'x'.zfill(999999999) }}", {}, "zfill"),
    ("{{ '\\t\\t'.expandtabs(999999999) }}", {}, "expandtabs"),
    ("{{ ('x' * 300000).replace('x', 'yy') }}", {}, "replace"),
    ("{{ ('x' * 300000)|replace('x', 'yy') }}", {}, "replace"),
    ("{% set a = 'x' * 300000 %}{% set b = a ~ a %}{{ b|length }}", {}, "concatenation"),
    ("{% set a = 'x' * 300000 %}{{ (a + a)|length }}", {}, "concatenation"),
    ("{{ [s, s]|join }}", {"s": "x" * 300_000}, "join"),
    ("{{ ''.join([s, s]) }}", {"s": "x" * 300_000}, "join"),
    ("{{ s|wordwrap(1, wrapstring=s) }}", {"s": "x " * 1000}, "wordwrap"),
    ("{{ [1]|batch(999999999, 0)|list }}", {}, "batch"),
    ("{{ [1]|slice(999999999)|list }}", {}, "slice"),
    ("{{ [1]|tojson(indent=999999999) }}", {}, "indent"),
    ("{{ lipsum(10**6) }}", {}, "lipsum"),
])
def test_render_jinja_runaway_guards(template: str, variables: dict[str, Any], message: str) -> None:
    # the named guard stopped it (no wall-clock check: these machines are shared and noisy)
    with pytest.raises(TemplateError) as info:
        render_jinja(template, variables)
    assert message.lower() in str(info.value).lower()


def test_render_jinja_output_cap_boundary() -> None:
    assert render_jinja("{{ x }}", {"x": "好" * 10}, max_output=10) == "好" * 10
    with pytest.raises(TemplateError, match="output exceeds the limit of 9"):
        render_jinja("{{ x }}", {"x": "好" * 10}, max_output=9)
    assert len(render_jinja("{{ 'x' * 400000 }}", {})) == 400_000  # the default cap, inclusive


def test_render_jinja_budgets_allow_ordinary_templates() -> None:
    text = render_jinja("{% for i in range(1000) %}{% for j in range(100) %}{% endfor %}{{ i % 10 }}{% endfor %}",
                        {})
    assert len(text) == 1000
    assert MAX_STEPS >= 100_000 and MAX_CALLS >= 10_000
    calls = render_jinja("{% for i in range(5000) %}{{ 'a'.upper() }}{% endfor %}", {})
    assert calls == "A" * 5000


# -- if-else operators -------------------------------------------------------------------------------
@pytest.mark.parametrize(("var", "op", "value", "expected"), [
    # contains / not contains: substrings of strings, membership of arrays
    ("name", "contains", "张", True), ("name", "contains", "李", False),
    ("tags", "contains", "中文", True), ("tags", "contains", "c", False),
    ("nums", "contains", "2", True), ("nums", "contains", "7", False),
    ("flags", "contains", "true", True),
    ("empty_s", "contains", "", False), ("none", "contains", "a", False), ("nope", "contains", "a", False),
    ("age", "contains", "3", False),  # not a string/array
    ("name", "not contains", "李", True), ("name", "not contains", "张", False),
    ("tags", "not contains", "z", True), ("tags", "not contains", "a", False),
    ("empty_l", "not contains", "a", True), ("none", "not contains", "a", True),
    ("nope", "not contains", "a", False),
    # start with / end with
    ("name", "start with", "张", True), ("name", "start with", "三", False),
    (["sys", "query"], "start with", "hello", True), ("tags", "start with", "a", False),
    ("nope", "start with", "", False),
    ("name", "end with", "三", True), (["sys", "query"], "end with", "world", True),
    (["sys", "query"], "end with", "hello", False), ("empty_s", "end with", "", False),
    # is / is not: strings, booleans ("true"/"false"), numbers compared as numbers
    ("name", "is", "张三", True), ("name", "is", "张", False),
    ("flag", "is", "true", True), ("flag", "is", "false", False), ("off", "is", "false", True),
    ("off", "is", "maybe", False), ("age", "is", "30", True), ("age", "is", "abc", False),
    ("none", "is", "", False), ("nope", "is", "", False),
    ("age_s", "is", 30, True), ("empty_s", "is", None, True),  # non-string values compare as text
    ("name", "is not", "李四", True), ("name", "is not", "张三", False),
    ("flag", "is not", "false", True), ("flag", "is not", "true", False),
    ("none", "is not", "x", False), ("nope", "is not", "x", False),
    # empty / not empty
    ("empty_s", "empty", None, True), ("empty_l", "empty", None, True), ("none", "empty", None, True),
    ("nope", "empty", None, True), ("name", "empty", None, False), ("tags", "empty", None, False),
    ("name", "not empty", None, True), ("tags", "not empty", None, True),
    ("empty_s", "not empty", None, False), ("empty_l", "not empty", None, False),
    ("none", "not empty", None, False), ("nope", "not empty", None, False),
    # in / not in: a list, a JSON list string or a comma-separated string
    ("name", "in", ["张三", "李四"], True), ("name", "in", "张三, 李四", True), ("name", "in", '["张三"]', True),
    ("name", "in", "李四,王五", False), ("age", "in", "30,40", True), ("flag", "in", ["true"], True),
    ("nope", "in", ["a"], False), ("empty_s", "in", [""], False), ("age", "in", 30, True),
    ("name", "not in", "李四,王五", True), ("name", "not in", ["张三"], False),
    ("none", "not in", ["a"], True), ("nope", "not in", ["a"], False),
    # all of
    ("tags", "all of", ["a", "中文"], True), ("tags", "all of", "a,z", False),
    (["sys", "query"], "all of", '["hello", "world"]', True), (["sys", "query"], "all of", ["bye"], False),
    ("nope", "all of", ["a"], False), ("empty_l", "all of", [], False),
    # numbers (numeric strings converted; non-numeric → False)
    ("age", "=", "30", True), ("age", "=", 30, True), ("age", "=", "31", False), ("age", "=", " 3e1 ", True),
    ("age_s", "=", "30", True), ("price", "=", "9.5", True), ("bad_num", "=", "1", False),
    ("age", "=", "abc", False), ("nope", "=", "1", False), ("none", "=", "1", False),
    ("flag", "=", "true", True), ("flag", "=", "1", True), ("off", "=", "true", False),
    ("name", "=", "张三", False),
    ("age", "≠", "31", True), ("age", "≠", "30", False), ("age", "!=", "31", True),
    ("bad_num", "≠", "1", False), ("nope", "≠", "1", False), ("off", "≠", "true", True),
    ("age", ">", "29", True), ("age", ">", "30", False), ("age_s", ">", "29.5", True),
    ("price", ">", "9", True), ("bad_num", ">", "0", False), ("nope", ">", "0", False),
    ("flag", ">", "0", False), ("tags", ">", "0", False),
    ("age", "<", "31", True), ("age", "<", "30", False), ("age", "<", "x", False),
    ("age", "≥", "30", True), ("age", "≥", "31", False), ("age", ">=", "30", True), ("age", ">=", "31", False),
    ("age", "≤", "30", True), ("age", "≤", "29", False), ("age", "<=", "30", True), ("age", "<=", "29", False),
    # null / not null / exists / not exists
    ("none", "null", None, True), ("nope", "null", None, True), ("name", "null", None, False),
    ("empty_s", "null", None, False),
    ("none", "not null", None, False), ("nope", "not null", None, False), ("empty_s", "not null", None, True),
    ("name", "exists", None, True), ("empty_s", "exists", None, True), ("none", "exists", None, False),
    ("nope", "exists", None, False), (["nonode", "x"], "exists", None, False),
    ("nope", "not exists", None, True), ("none", "not exists", None, True), ("name", "not exists", None, False),
    # deeper selectors
    (["start", "obj", "k", "deep"], "is", "v", True), (["start", "obj", "list", "1", "x"], "=", "2", True),
    (["start", "obj", "k", "nope"], "exists", None, False), (["start", "obj", "list", "5"], "not exists", None, True),
    # values may reference variables
    (["sys", "query"], "is", "{{#sys.query#}}", True), ("name", "is", "{{#sys.query#}}", False),
    ("age", ">", "{{#start.price#}}", True), ("name", "in", ["{{#start.name#}}", "x"], True),
    ("name", "is", "{{#start.nope#}}", False), ("empty_s", "is", "{{#start.nope#}}", True),
])
def test_operator(var: str | list[str], op: str, value: Any, expected: bool) -> None:
    assert one(var, op, value) is expected


def test_compare_missing_and_unknown_operator() -> None:
    for op in ("not exists", "empty", "null"):
        assert compare(op, MISSING) is True
    for op in ("exists", "not empty", "not null", "contains", "not contains", "is not", "≠", "not in", "="):
        assert compare(op, MISSING, "x") is False
    with pytest.raises(ValueError, match="unsupported comparison operator: 'like'"):
        compare("like", "a", "a")
    with pytest.raises(ValueError, match="unsupported"):
        one("name", "like", "x")


def test_file_sub_conditions() -> None:
    def data(op: str, key: str, value: Any, logical: str = "and") -> dict[str, Any]:
        return {"cases": [{"case_id": "f", "conditions": [{
            "variable_selector": ["start", "files"], "comparison_operator": op,
            "sub_variable_condition": {"logical_operator": logical, "conditions": [
                {"key": key, "comparison_operator": "is", "value": value}]}}]}]}

    assert evaluate_cases(data("contains", "extension", "png"), get)[0] == "f"  # "." normalised
    assert evaluate_cases(data("contains", "extension", ".pdf"), get)[0] == "f"
    assert evaluate_cases(data("contains", "extension", "doc"), get)[0] == "false"


# -- if-else case selection ----------------------------------------------------------------------------
def cond(var: str, op: str, value: Any = None, cid: str = "c") -> dict[str, Any]:
    return {"id": cid, "variable_selector": ["start", var], "comparison_operator": op, "value": value}


YES, NO = cond("age", ">", "18"), cond("name", "is", "nobody")


@pytest.mark.parametrize(("cases", "handle"), [
    ([{"case_id": "a", "conditions": [YES]}, {"case_id": "b", "conditions": [YES]}], "a"),  # first match wins
    ([{"case_id": "a", "conditions": [NO]}, {"case_id": "b", "conditions": [YES]}], "b"),
    ([{"case_id": "a", "conditions": [NO]}, {"case_id": "b", "conditions": [NO]}], "false"),
    ([{"case_id": "a", "logical_operator": "and", "conditions": [YES, NO]}], "false"),
    ([{"case_id": "a", "logical_operator": "and", "conditions": [YES, YES]}], "a"),
    ([{"case_id": "a", "logical_operator": "or", "conditions": [NO, YES]}], "a"),
    ([{"case_id": "a", "logical_operator": "or", "conditions": [NO, NO]}], "false"),
    ([{"case_id": "a", "logical_operator": "or", "conditions": [NO]},
      {"case_id": "b", "logical_operator": "and", "conditions": [YES, cond("nope", "not exists")]}], "b"),
    ([], "false"),
])
def test_case_selection(cases: list[dict[str, Any]], handle: str) -> None:
    selected, result, process = evaluate_cases({"cases": cases}, get)
    assert (selected, result) == (handle, handle != "false")
    assert [p["case_id"] for p in process] == [c["case_id"] for c in cases][:len(process)]


def test_process_data_and_short_circuit() -> None:
    data = {"cases": [
        {"case_id": "a", "logical_operator": "and",
         "conditions": [cond("name", "is", "李四", "c1"), cond("age", ">", "1", "c2")]},
        {"case_id": "b", "logical_operator": "or",
         "conditions": [cond("age", "=", "{{#start.age_s#}}", "c3"), cond("name", "empty", None, "c4")]},
    ]}
    handle, result, process = evaluate_cases(data, get)
    assert (handle, result) == ("b", True)
    assert process == [
        {"case_id": "a", "logical_operator": "and", "result": False, "conditions": [
            {"id": "c1", "variable_selector": ["start", "name"], "comparison_operator": "is",
             "actual_value": "张三", "variable_exists": True, "expected_value": "李四", "result": False}]},
        {"case_id": "b", "logical_operator": "or", "result": True, "conditions": [
            {"id": "c3", "variable_selector": ["start", "age"], "comparison_operator": "=",
             "actual_value": 30, "variable_exists": True, "expected_value": "30", "result": True}]},
    ]


def test_process_data_marks_missing_variables() -> None:
    _, _, process = evaluate_cases({"cases": [{"case_id": "a", "conditions": [cond("nope", "exists")]}]}, get)
    assert process[0]["conditions"][0]["actual_value"] is None
    assert process[0]["conditions"][0]["variable_exists"] is False


@pytest.mark.parametrize(("data", "expected"), [
    ({"logical_operator": "and", "conditions": [YES, YES]}, ("true", True)),
    ({"logical_operator": "and", "conditions": [YES, NO]}, ("false", False)),
    ({"logical_operator": "or", "conditions": [NO, YES]}, ("true", True)),
    ({"conditions": [NO]}, ("false", False)),
])
def test_legacy_conditions(data: dict[str, Any], expected: tuple[str, bool]) -> None:
    handle, result, process = evaluate_cases(data, get)
    assert (handle, result) == expected
    assert process[0]["case_id"] == "true"


def test_bad_if_else_config() -> None:
    with pytest.raises(ValueError, match="no case_id"):
        evaluate_cases({"cases": [{"conditions": [YES]}]}, get)
    with pytest.raises(ValueError, match="logical_operator"):
        evaluate_cases({"cases": [{"case_id": "a", "logical_operator": "xor", "conditions": [YES]}]}, get)


# -- list-operator -------------------------------------------------------------------------------------
def lo(items: list[Any], **config: Any) -> dict[str, Any]:
    data = {"filter_by": {"enabled": False, "conditions": []}, "order_by": {"enabled": False},
            "limit": {"enabled": False}, "extract_by": {"enabled": False}}
    data.update(config)
    return list_operator(data, items)


def flt(*conditions: tuple[str, str, Any]) -> dict[str, Any]:
    return {"enabled": True,
            "conditions": [{"key": k, "comparison_operator": op, "value": v} for k, op, v in conditions]}


PEOPLE = [{"name": "Ann", "age": 30}, {"name": "Bob", "age": 25}, {"name": "张伟", "age": 30},
          {"name": "Cid"}, {"name": "Dee", "age": None}]


@pytest.mark.parametrize(("items", "config", "result"), [
    (["apple", "banana", "cherry", ""], {"filter_by": flt(("", "contains", "an"))}, ["banana"]),
    (["apple", "banana", ""], {"filter_by": flt(("", "not empty", None))}, ["apple", "banana"]),
    (["apple", "banana", ""], {"filter_by": flt(("", "start with", "b"))}, ["banana"]),
    (["中文", "日本語", "中国"], {"filter_by": flt(("", "start with", "中"))}, ["中文", "中国"]),
    (["a", "b", "c"], {"filter_by": flt(("", "in", "a,c"))}, ["a", "c"]),
    (["a", "b", "c"], {"filter_by": flt(("", "not in", ["a"]))}, ["b", "c"]),
    ([1, 2, 3, 4], {"filter_by": flt(("", ">", "2"))}, [3, 4]),
    ([1, 2, 3, 4], {"filter_by": flt(("", ">=", "2"), ("", "≠", "3"))}, [2, 4]),  # all conditions hold
    ([1.5, 2.5], {"filter_by": flt(("", "≤", "2"))}, [1.5]),
    (PEOPLE, {"filter_by": flt(("age", "=", "30"))}, [PEOPLE[0], PEOPLE[2]]),
    (PEOPLE, {"filter_by": flt(("age", "not exists", None))}, [PEOPLE[3], PEOPLE[4]]),
    (PEOPLE, {"filter_by": flt(("age", "=", "30"), ("name", "is", "张伟"))}, [PEOPLE[2]]),
    ([1, 2], {"filter_by": {"enabled": False, "conditions": [{"key": "", "comparison_operator": ">",
                                                               "value": "5"}]}}, [1, 2]),
    # extract (1-based serial, string or number)
    (["a", "b", "c"], {"extract_by": {"enabled": True, "serial": "2"}}, ["b"]),
    (["a", "b", "c"], {"extract_by": {"enabled": True, "serial": 3}}, ["c"]),
    # order: stable, None/mixed values last in both directions
    ([3, 1, 2], {"order_by": {"enabled": True, "key": "", "value": "asc"}}, [1, 2, 3]),
    ([3, 1, 2], {"order_by": {"enabled": True, "key": "", "value": "desc"}}, [3, 2, 1]),
    (["b", "a", "中"], {"order_by": {"enabled": True, "key": "", "value": "asc"}}, ["a", "b", "中"]),
    ([2, None, "x", 1], {"order_by": {"enabled": True, "key": "", "value": "asc"}}, [1, 2, None, "x"]),
    ([2, None, "x", 1], {"order_by": {"enabled": True, "key": "", "value": "desc"}}, [2, 1, None, "x"]),
    (PEOPLE, {"order_by": {"enabled": True, "key": "age", "value": "asc"}},
     [PEOPLE[1], PEOPLE[0], PEOPLE[2], PEOPLE[3], PEOPLE[4]]),
    (PEOPLE, {"order_by": {"enabled": True, "key": "age", "value": "desc"}},  # ties keep input order
     [PEOPLE[0], PEOPLE[2], PEOPLE[1], PEOPLE[3], PEOPLE[4]]),
    # limit
    ([1, 2, 3], {"limit": {"enabled": True, "size": 2}}, [1, 2]),
    ([1, 2, 3], {"limit": {"enabled": True, "size": 0}}, []),
    ([1, 2, 3], {"limit": {"enabled": True, "size": 10}}, [1, 2, 3]),
    # the order of operations: filter → extract → order → limit
    ([3, 1, 2], {"extract_by": {"enabled": True, "serial": "1"},
                 "order_by": {"enabled": True, "key": "", "value": "asc"}}, [3]),
    ([3, 1, 2], {"order_by": {"enabled": True, "key": "", "value": "asc"},
                 "limit": {"enabled": True, "size": 2}}, [1, 2]),
    ([5, 3, 1, 4], {"filter_by": flt(("", ">", "1")), "extract_by": {"enabled": True, "serial": "2"}}, [3]),
    ([5, 3, 1, 4, 2], {"filter_by": flt(("", "≥", "2")), "order_by": {"enabled": True, "value": "desc"},
                       "limit": {"enabled": True, "size": 3}}, [5, 4, 3]),
    ([], {"extract_by": {"enabled": True, "serial": "5"}}, []),  # an empty input stays empty
])
def test_list_operator(items: list[Any], config: dict[str, Any], result: list[Any]) -> None:
    out = lo(items, **config)
    assert out == {"result": result, "first_record": result[0] if result else None,
                   "last_record": result[-1] if result else None}


def test_list_operator_does_not_mutate_input() -> None:
    items = [3, 1, 2]
    lo(items, order_by={"enabled": True, "key": "", "value": "asc"})
    assert items == [3, 1, 2]


def test_list_operator_renders_references_with_get() -> None:
    data = {"filter_by": flt(("", "=", "{{#start.age#}}")), "extract_by": {"enabled": False}}
    assert list_operator(data, [10, 30, "30"], get=get)["result"] == [30, "30"]
    assert list_operator(data, [10, 30])["result"] == []  # without get the text is literal


@pytest.mark.parametrize(("config", "error", "message"), [
    ({"extract_by": {"enabled": True, "serial": "0"}}, ValueError, "serial 0 is out of range: the list has 3"),
    ({"extract_by": {"enabled": True, "serial": 4}}, ValueError, "serial 4 is out of range"),
    ({"extract_by": {"enabled": True, "serial": "abc"}}, ValueError, "serial must be an integer, got 'abc'"),
    ({"extract_by": {"enabled": True, "serial": None}}, ValueError, "serial must be an integer"),
    ({"filter_by": flt(("", ">", "5")), "extract_by": {"enabled": True, "serial": "1"}}, ValueError,
     "the list has 0"),
    ({"order_by": {"enabled": True, "key": "", "value": "up"}}, ValueError, "'asc' or 'desc'"),
    ({"limit": {"enabled": True, "size": -1}}, ValueError, "must be >= 0"),
    ({"limit": {"enabled": True, "size": "many"}}, ValueError, "limit.size must be an integer"),
    ({"filter_by": flt(("", "like", "a"))}, ValueError, "unsupported comparison operator"),
])
def test_list_operator_errors(config: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        lo([1, 2, 3], **config)


def test_list_operator_rejects_non_arrays() -> None:
    with pytest.raises(TypeError, match="must be an array, got str"):
        list_operator({}, "abc")  # type: ignore[arg-type]


# -- variable-aggregator ------------------------------------------------------------------------------
@pytest.mark.parametrize(("selectors", "output"), [
    ([["start", "name"], ["start", "age"]], "张三"),
    ([["start", "nope"], ["nonode", "x"], ["start", "none"], ["start", "age"]], 30),  # missing/None skipped
    ([["start", "empty_s"], ["start", "age"]], ""),  # "" is a value
    ([["start", "obj", "k", "deep"]], "v"),
    ([["start", "nope"], []], None),
    ([], None),
])
def test_aggregate(selectors: list[list[str]], output: Any) -> None:
    assert aggregate({"variables": selectors}, get) == {"output": output}


def test_aggregate_groups() -> None:
    data = {"variables": [["start", "name"]], "advanced_settings": {"group_enabled": True, "groups": [
        {"group_name": "g1", "variables": [["start", "nope"], ["start", "tags"]]},
        {"group_name": "组2", "variables": [["start", "none"]]},
        {"group_name": "g3", "variables": [["sys", "query"], ["start", "name"]]},
    ]}}
    assert aggregate(data, get) == {"g1": {"output": ["a", "b", "中文"]}, "组2": {"output": None},
                                    "g3": {"output": "hello world"}}
    data["advanced_settings"]["group_enabled"] = False
    assert aggregate(data, get) == {"output": "张三"}
    with pytest.raises(ValueError, match="group #1 has no group_name"):
        aggregate({"advanced_settings": {"group_enabled": True, "groups": [{"variables": []}]}}, get)


# -- coerce ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "type_name", "expected"), [
    ("abc", "string", "abc"), ("中文", "select", "中文"), ("", "string", ""),
    (5, "number", 5), (2.5, "number", 2.5), ("42", "number", 42), (" -3.5 ", "number", -3.5),
    ("1e3", "number", 1000.0), (0, "number", 0),
    (True, "boolean", True), ("false", "boolean", False), (" TRUE ", "boolean", True),
    ({"a": 1}, "object", {"a": 1}), ('{"a": "中"}', "object", {"a": "中"}),
    (["a", "b"], "array[string]", ["a", "b"]), ([], "array[string]", []),
    ([1, "2", 3.5], "array[number]", [1, 2, 3.5]), ('[1, 2]', "array[number]", [1, 2]),
    ([{"a": 1}], "array[object]", [{"a": 1}]), ([True, "false"], "array[boolean]", [True, False]),
    (("x",), "array[string]", ["x"]),
    (None, "number", None), (None, "array[object]", None),
])
def test_coerce(value: Any, type_name: str, expected: Any) -> None:
    result = coerce(value, type_name)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(("value", "type_name", "message"), [
    ("abc", "number", "expected number, got 'abc'"),
    (True, "number", "expected number, got boolean True"),
    ("1_000", "number", "expected number, got '1_000'"),
    ("nan", "number", "expected number, got 'nan'"),
    (float("inf"), "number", "expected a finite number, got inf"),
    ("1e999", "number", "expected a finite number, got '1e999'"),
    ([1], "number", "expected number, got array [1]"),
    (5, "string", "expected string, got number 5"),
    ({"a": 1}, "select", "expected string, got object {'a': 1}"),
    ("yes", "boolean", "expected boolean, got 'yes'"),
    (1, "boolean", "expected boolean, got number 1"),
    ("[1]", "object", "expected object, got '[1]'"),
    ([1], "object", "expected object, got array [1]"),
    ("a,b", "array[string]", "expected array[string], got 'a,b'"),
    ({"a": 1}, "array[object]", "expected array[object], got object"),
    (["a", 2], "array[string]", "expected array[string]: item 1: expected string, got number 2"),
    ([1, "x"], "array[number]", "expected array[number]: item 1: expected number, got 'x'"),
    ([1, None], "array[number]", "item 1: expected number, got null None"),
    ([{}, 3], "array[object]", "item 1: expected object, got number 3"),
    (["true", "nope"], "array[boolean]", "item 1: expected boolean, got 'nope'"),
    ("x", "file", "unsupported type 'file'"),
    ([1], "array[file]", "unsupported type 'array[file]'"),
])
def test_coerce_errors(value: Any, type_name: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        coerce(value, type_name)
    assert message in str(info.value)
