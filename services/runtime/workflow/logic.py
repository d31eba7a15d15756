"""Pure logic of Dify workflow nodes (no I/O), used by the workflow engine (reference §6).

- ``{{#node.var.path#}}`` text templates (``TEMPLATE_RE``, ``render_template``) and sandboxed Jinja2
  (``render_jinja``) for template-transform and jinja2 LLM prompts;
- if-else conditions (``evaluate_cases``; ``compare`` is the shared operator table);
- list-operator (``list_operator``), variable-aggregator (``aggregate``);
- output/parameter type coercion (``coerce``) for the code node and parameter-extractor.

Variables are read through the engine's getter ``get(selector) -> value`` which raises ``KeyError`` for a
missing variable. ``resolve`` reads ``selector[:2]`` (the variable) with it and walks any deeper path
through dicts (keys) and lists (integer indexes) itself; a missing key/index counts as a missing variable.

Jinja2 limits. Templates run in an ``ImmutableSandboxedEnvironment`` with: ``range()`` capped at
``MAX_RANGE`` items; per-render budgets of ``MAX_STEPS`` loop iterations and ``MAX_CALLS`` calls (so nested
loops or recursive macros that print nothing still stop); output capped at ``max_output`` characters while rendering;
and size checks before the obvious amplifiers run (``*``, ``+``, ``~``, ``**``, ``%``/``str.format`` widths,
the ``center/indent/join/replace/wordwrap/batch/slice/tojson`` filters, ``str.center/ljust/rjust/zfill/
expandtabs/replace/join``, ``lipsum``). These stop accidental runaway templates quickly; they are not a hard
memory boundary against a hostile template author (e.g. stringifying deeply nested repeated lists), which
needs a process with OS limits.
"""

from __future__ import annotations

import json
import math
import re
import string
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from jinja2 import filters as jinja_filters
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.runtime import Context, markup_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import generate_lorem_ipsum, pass_context, pass_environment, pass_eval_context

from shared.workflow import TEMPLATE_RE
from shared.workflow.graph import normalize_type

Getter = Callable[[list[str]], Any]

__all__ = [
    "MAX_CALLS",
    "MAX_RANGE",
    "MAX_STEPS",
    "MISSING",
    "OPERATORS",
    "TEMPLATE_RE",
    "Getter",
    "TemplateError",
    "aggregate",
    "coerce",
    "compare",
    "evaluate_cases",
    "list_operator",
    "render_jinja",
    "render_template",
    "resolve",
    "to_text",
]


class _Missing:
    """The value of a variable that does not exist (distinct from an existing ``None``)."""

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()


# -- variables and {{#...#}} templates ---------------------------------------------------------------
# Dify's {{#node_id.var.path#}} (reference §6) is defined once, in shared.workflow; group(1) = "#node.var.path#"
_INDEX_RE = re.compile(r"[0-9]+")


def resolve(selector: Sequence[Any], get: Getter) -> Any:
    """The value at ``selector`` = ``[node_id, var, *path]``; raises ``KeyError`` when it is missing."""
    selector = list(selector)
    if len(selector) <= 2:
        return get(selector)
    value = get(selector[:2])
    for part in selector[2:]:
        if isinstance(value, dict):
            if part not in value:
                raise KeyError(".".join(map(str, selector)))
            value = value[part]
        elif isinstance(value, list | tuple):
            if isinstance(part, int) and not isinstance(part, bool):
                index = part
            elif isinstance(part, str) and _INDEX_RE.fullmatch(part):
                index = int(part)
            else:
                raise KeyError(".".join(map(str, selector)))
            if not 0 <= index < len(value):
                raise KeyError(".".join(map(str, selector)))
            value = value[index]
        else:
            raise KeyError(".".join(map(str, selector)))
    return value


def to_text(value: Any) -> str:
    """How a value appears in a text template: strings as is, None as "", everything else as JSON."""
    if value is None or value is MISSING:
        return ""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except ValueError:  # e.g. a circular structure
        return str(value)


def render_template(text: str, get: Getter) -> str:
    """Replace every ``{{#node_id.var.path#}}`` in ``text``; missing variables render as ""."""

    def substitute(m: re.Match[str]) -> str:
        try:
            value = resolve(m.group(1)[1:-1].split("."), get)
        except KeyError:
            return ""
        return to_text(value)

    return TEMPLATE_RE.sub(substitute, text)


# -- Jinja2 -------------------------------------------------------------------------------------------
MAX_RANGE = 100_000  # items in one range()
MAX_STEPS = 1_000_000  # loop iterations in one render
MAX_CALLS = 100_000  # sandboxed calls (macros, methods, ...) in one render
_MAX_POW_BITS = 100_000  # int ** int results above ~30,000 digits are refused before computing
_MAX_TOJSON_INDENT = 64
_MAX_LIPSUM = (100, 1_000)  # paragraphs, words per paragraph
_LOOP_GUARD = "_plexus_loop_guard"


class TemplateError(ValueError):
    """A template failed to compile or render, or hit a limit; the message says why."""


_PRINTF_RE = re.compile(r"%%|%(?:\([^)]*\))?[#0 +\-]*(\*|[0-9]+)?(?:\.(\*|[0-9]+))?")
_DIGITS_RE = re.compile(r"[0-9]+")


def _too_big(digits: str, limit: int) -> bool:
    return len(digits) > 12 or int(digits) > limit


def _check_printf(fmt: str, limit: int) -> None:
    for m in _PRINTF_RE.finditer(fmt):
        for group in m.groups():
            if group == "*":
                raise TemplateError("'*' widths/precisions in %-formatting are not allowed in templates")
            if group and _too_big(group, limit):
                raise TemplateError(f"%-format width/precision {group} is over the limit of {limit}")


def _check_format_spec(fmt: str, limit: int) -> None:
    for _, field, spec, _ in string.Formatter().parse(fmt):
        if field is None or not spec:
            continue
        if "{" in spec:
            raise TemplateError("nested replacement fields in str.format specs are not allowed in templates")
        for digits in _DIGITS_RE.findall(spec):
            if _too_big(digits, limit):
                raise TemplateError(f"str.format width/precision {digits} is over the limit of {limit}")


def _as_int(value: Any) -> int:
    return value if isinstance(value, int) else 0


class _GuardedCodeGenerator(CodeGenerator):
    """Routes ``a ~ b`` through ``environment.guarded_concat`` so the result size is checked first."""

    @optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.guarded_concat(context, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _Environment(ImmutableSandboxedEnvironment):
    code_generator_class = _GuardedCodeGenerator
    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self, max_size: int) -> None:
        super().__init__(autoescape=False)
        self.max_size = max_size
        self.steps = 0
        self.calls = 0
        self.globals["range"] = self.bounded_range
        self.globals["lipsum"] = _lipsum
        self.filters.update({
            _LOOP_GUARD: _loop_guard, "center": _f_center, "indent": _f_indent, "join": _f_join,
            "replace": _f_replace, "format": _f_format, "wordwrap": _f_wordwrap, "batch": _f_batch,
            "slice": _f_slice, "tojson": _f_tojson,
        })

    # limits
    def tick(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise TemplateError(f"template exceeded {MAX_STEPS} loop iterations")

    def check_size(self, size: int, what: str) -> None:
        if size > self.max_size:
            raise TemplateError(f"{what} would produce {size} characters/items, over the limit of {self.max_size}")

    def bounded_range(self, *args: int) -> range:
        rng = range(*args)
        if len(rng) > MAX_RANGE:
            raise TemplateError(f"range() of {len(rng)} items is over the limit of {MAX_RANGE}")
        return rng

    # sandbox hooks
    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(n, int):
                    self.check_size(len(seq) * max(n, 0), "repetition")
        elif operator == "+":
            if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
                self.check_size(len(left) + len(right), "concatenation")
        elif operator == "**":
            if (isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1
                    and left.bit_length() * right > _MAX_POW_BITS):
                raise TemplateError(f"{left} ** {right} is too large to compute")
        elif operator == "%" and isinstance(left, str):
            _check_printf(left, self.max_size)
        return super().call_binop(context, operator, left, right)

    def guarded_concat(self, context: Context, values: tuple[Any, ...]) -> str:
        texts = [str(v) for v in values]
        self.check_size(sum(map(len, texts)), "'~' concatenation")
        if context.eval_ctx.autoescape:
            return markup_join(values)
        return "".join(texts)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _check_format_spec(value.__self__, self.max_size)
        return wrapped

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls > MAX_CALLS:
            raise TemplateError(f"template exceeded {MAX_CALLS} function/macro calls")
        if isinstance(obj, types.BuiltinMethodType) and isinstance(getattr(obj, "__self__", None), str):
            args = self._check_str_method(obj.__self__, obj.__name__, args)
        return super().call(context, obj, *args, **kwargs)

    def _check_str_method(self, s: str, name: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
        if name in ("center", "ljust", "rjust", "zfill") and args:
            self.check_size(_as_int(args[0]), f"str.{name}")
        elif name == "expandtabs":
            tabsize = _as_int(args[0]) if args else 8
            self.check_size(len(s) + s.count("\t") * tabsize, "str.expandtabs")
        elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
            self.check_size(_replace_size(s, args[0], args[1], args[2] if len(args) > 2 else -1), "str.replace")
        elif name == "join" and args:
            items = list(args[0])
            size = sum(len(x) if isinstance(x, str) else 0 for x in items) + len(s) * max(len(items) - 1, 0)
            self.check_size(size, "str.join")
            args = (items, *args[1:])
        return args


def _replace_size(s: str, old: str, new: str, count: Any) -> int:
    n = s.count(old) if old else len(s) + 1
    if isinstance(count, int) and count >= 0:
        n = min(n, count)
    return len(s) + n * max(len(new) - len(old), 0)


@pass_context
def _loop_guard(context: Context, iterable: Iterable[Any]) -> Iterator[Any]:
    env = context.environment
    for item in iterable:
        env.tick()  # type: ignore[attr-defined]
        yield item


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    if _as_int(n) > _MAX_LIPSUM[0] or _as_int(max) > _MAX_LIPSUM[1]:
        raise TemplateError(f"lipsum() is limited to {_MAX_LIPSUM[0]} paragraphs of {_MAX_LIPSUM[1]} words")
    return str(generate_lorem_ipsum(n, html, min, max))


@pass_environment
def _f_center(env: _Environment, value: Any, width: int = 80) -> str:
    env.check_size(_as_int(width), "center")
    return jinja_filters.do_center(value, width)


@pass_environment
def _f_indent(env: _Environment, s: Any, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    text = str(s)
    step = len(width) if isinstance(width, str) else _as_int(width)
    env.check_size(len(text) + (text.count("\n") + 1) * step, "indent")
    return jinja_filters.do_indent(s, width, first, blank)


@pass_eval_context
def _f_join(eval_ctx: Any, value: Iterable[Any], d: str = "", attribute: str | int | None = None) -> str:
    items = list(value)
    if attribute is not None:
        items = list(map(jinja_filters.make_attrgetter(eval_ctx.environment, attribute), items))
    size = sum(len(str(x)) for x in items) + len(str(d)) * max(len(items) - 1, 0)
    eval_ctx.environment.check_size(size, "join")
    return jinja_filters.sync_do_join(eval_ctx, items, d)


@pass_eval_context
def _f_replace(eval_ctx: Any, s: Any, old: Any, new: Any, count: int | None = None) -> str:
    size = _replace_size(str(s), str(old), str(new), -1 if count is None else count)
    eval_ctx.environment.check_size(size, "replace")
    return jinja_filters.do_replace(eval_ctx, s, old, new, count)


@pass_environment
def _f_format(env: _Environment, value: Any, *args: Any, **kwargs: Any) -> str:
    _check_printf(str(value), env.max_size)
    return jinja_filters.do_format(value, *args, **kwargs)


@pass_environment
def _f_wordwrap(env: _Environment, s: Any, width: int = 79, break_long_words: bool = True,
                wrapstring: str | None = None, break_on_hyphens: bool = True) -> str:
    text = str(s)
    sep = env.newline_sequence if wrapstring is None else str(wrapstring)
    env.check_size(len(text) + (len(text) // max(_as_int(width), 1) + 1) * len(sep), "wordwrap")
    return jinja_filters.do_wordwrap(env, s, width, break_long_words, wrapstring, break_on_hyphens)


@pass_environment
def _f_batch(env: _Environment, value: Iterable[Any], linecount: int, fill_with: Any = None) -> Any:
    env.check_size(_as_int(linecount), "batch")
    return jinja_filters.do_batch(value, linecount, fill_with)


@pass_environment
def _f_slice(env: _Environment, value: Iterable[Any], slices: int, fill_with: Any = None) -> Any:
    env.check_size(_as_int(slices), "slice")
    return jinja_filters.sync_do_slice(value, slices, fill_with)


@pass_eval_context
def _f_tojson(eval_ctx: Any, value: Any, indent: int | None = None) -> Any:
    if isinstance(indent, int) and indent > _MAX_TOJSON_INDENT:
        raise TemplateError(f"tojson indent {indent} is over the limit of {_MAX_TOJSON_INDENT}")
    return jinja_filters.do_tojson(eval_ctx, value, indent)


def render_jinja(template: str, variables: dict[str, Any], *, max_output: int = 400_000) -> str:
    """Render a Jinja2 template in the sandbox; undefined variables render as "" (Dify's behaviour).

    Raises ``TemplateError`` for syntax errors, sandbox violations, undefined attribute access, runtime
    errors and every limit (see the module docstring); output over ``max_output`` characters included.
    """
    env = _Environment(max_output)
    try:
        tree = env.parse(template)
        for loop in list(tree.find_all(nodes.For)):
            loop.iter = nodes.Filter(loop.iter, _LOOP_GUARD, [], [], None, None, lineno=loop.lineno)
        compiled = env.template_class.from_code(env, env.compile(tree), env.make_globals(None), None)
    except TemplateSyntaxError as e:
        raise TemplateError(f"template syntax error (line {e.lineno}): {e.message}") from None
    except TemplateError:
        raise
    except Exception as e:  # noqa: BLE001 - anything else the compiler raises
        raise TemplateError(f"template compilation failed: {type(e).__name__}: {e}") from None

    parts: list[str] = []
    size = 0
    try:
        chunks = compiled.generate(variables)
        try:
            for chunk in chunks:
                size += len(chunk)
                if size > max_output:
                    raise TemplateError(f"template output exceeds the limit of {max_output} characters")
                parts.append(chunk)
        finally:
            chunks.close()
    except TemplateError:
        raise
    except SecurityError as e:
        raise TemplateError(f"template security violation: {e}") from None
    except UndefinedError as e:
        raise TemplateError(f"undefined value in template: {e}") from None
    except Exception as e:  # noqa: BLE001 - a template's runtime error is the node's error
        raise TemplateError(f"template rendering failed: {type(e).__name__}: {e}") from None
    return "".join(parts)


# -- comparison operators (if-else, list-operator filters) ---------------------------------------------
_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INT_RE = re.compile(r"[+-]?[0-9]+")


def _to_number(value: Any) -> int | float | None:
    """int/float as is (not bool, not NaN); numeric strings converted; anything else → None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, str):
        s = value.strip()
        try:
            if _INT_RE.fullmatch(s):
                return int(s)
            if _NUMBER_RE.fullmatch(s):
                return float(s)
        except ValueError:  # over Python's int-digits limit
            return None
    return None


def _to_bool(value: Any) -> bool | None:
    """Dify's boolean conversion: bools, ints, and "true"/"false"/integer strings; else None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    if isinstance(value, str):
        s = value.strip().lower()
        if s in ("true", "false"):
            return s == "true"
        if _INT_RE.fullmatch(s) and len(s) < 20:
            return int(s) != 0
    return None


def _as_str(value: Any) -> str:
    return to_text(value)


def _as_list(value: Any) -> list[Any]:
    """An expected value for in / not in / all of: a list, a JSON list string or a comma-separated string."""
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, str):
        s = value.strip()
        if not s:
            return []
        if s.startswith("["):
            try:
                loaded = json.loads(s)
            except ValueError:
                loaded = None
            if isinstance(loaded, list):
                return loaded
        return [p.strip() for p in s.split(",") if p.strip()]
    return [value]


def _loose_eq(a: Any, b: Any) -> bool:
    """Equality across the types a UI value (always a string) and a variable may have."""
    if isinstance(a, bool) or isinstance(b, bool):
        if isinstance(a, bool) and isinstance(b, bool):
            return a == b
        flag, other = (a, b) if isinstance(a, bool) else (b, a)
        return isinstance(other, str) and _to_bool(other) is flag
    if isinstance(a, int | float) or isinstance(b, int | float):
        x, y = _to_number(a), _to_number(b)
        return x is not None and y is not None and x == y
    return bool(a == b)


def _member(needle: Any, haystack: Iterable[Any]) -> bool:
    return any(_loose_eq(needle, item) for item in haystack)


def _op_contains(a: Any, e: Any) -> bool:
    if not a:
        return False
    if isinstance(a, str):
        return _as_str(e) in a
    if isinstance(a, list | tuple):
        return _member(e, a)
    return False


def _op_not_contains(a: Any, e: Any) -> bool:
    if not a:
        return True
    if isinstance(a, str):
        return _as_str(e) not in a
    if isinstance(a, list | tuple):
        return not _member(e, a)
    return False


def _op_start_with(a: Any, e: Any) -> bool:
    return isinstance(a, str) and bool(a) and a.startswith(_as_str(e))


def _op_end_with(a: Any, e: Any) -> bool:
    return isinstance(a, str) and bool(a) and a.endswith(_as_str(e))


def _op_is(a: Any, e: Any, negate: bool = False) -> bool:
    if a is None:
        return False
    if isinstance(a, bool):
        flag = _to_bool(e)
        return flag is not None and (a != flag if negate else a == flag)
    if isinstance(a, str):
        return (a != _as_str(e)) if negate else (a == _as_str(e))
    if isinstance(a, int | float):
        n = _to_number(e)
        return n is not None and (a != n if negate else a == n)
    return (a != e) if negate else (a == e)


def _op_in(a: Any, e: Any) -> bool:
    return bool(a) and _member(a, _as_list(e))


def _op_not_in(a: Any, e: Any) -> bool:
    return not a or not _member(a, _as_list(e))


def _op_all_of(a: Any, e: Any) -> bool:
    if not a:
        return False
    wanted = _as_list(e)
    if isinstance(a, str):
        return all(_as_str(x) in a for x in wanted)
    if isinstance(a, list | tuple):
        return all(_member(x, a) for x in wanted)
    return False


def _numeric(check: Callable[[Any, Any], bool], *, booleans: bool = False) -> Callable[[Any, Any], bool]:
    def op(a: Any, e: Any) -> bool:
        if isinstance(a, bool):
            if not booleans:
                return False
            flag = _to_bool(e)
            return flag is not None and check(a, flag)
        x, y = _to_number(a), _to_number(e)
        return x is not None and y is not None and check(x, y)

    return op


OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "contains": _op_contains,
    "not contains": _op_not_contains,
    "start with": _op_start_with,
    "end with": _op_end_with,
    "is": _op_is,
    "is not": lambda a, e: _op_is(a, e, negate=True),
    "empty": lambda a, e: not a,
    "not empty": lambda a, e: bool(a),
    "in": _op_in,
    "not in": _op_not_in,
    "all of": _op_all_of,
    "=": _numeric(lambda x, y: x == y, booleans=True),
    "≠": _numeric(lambda x, y: x != y, booleans=True),
    ">": _numeric(lambda x, y: x > y),
    "<": _numeric(lambda x, y: x < y),
    "≥": _numeric(lambda x, y: x >= y),
    "≤": _numeric(lambda x, y: x <= y),
    "null": lambda a, e: a is None,
    "not null": lambda a, e: a is not None,
    "exists": lambda a, e: a is not None,
    "not exists": lambda a, e: a is None,
}
_ALIASES = {"!=": "≠", ">=": "≥", "<=": "≤", "==": "="}
_TRUE_WHEN_MISSING = frozenset({"not exists", "empty", "null"})


def compare(operator: str, actual: Any, expected: Any = None) -> bool:
    """Evaluate one Dify comparison. ``actual`` is ``MISSING`` for a variable that does not exist
    (then only ``not exists``, ``empty`` and ``null`` hold). Never raises for a value of an unexpected
    type (the condition is False); an unknown operator raises ``ValueError``."""
    op = _ALIASES.get(operator, operator)
    check = OPERATORS.get(op)
    if check is None:
        raise ValueError(f"unsupported comparison operator: {operator!r}")
    if actual is MISSING:
        return op in _TRUE_WHEN_MISSING
    return check(actual, expected)


# -- if-else ------------------------------------------------------------------------------------------
def _render_value(value: Any, get: Getter | None) -> Any:
    if get is None:
        return value
    if isinstance(value, str):
        return render_template(value, get)
    if isinstance(value, list):
        return [render_template(v, get) if isinstance(v, str) else v for v in value]
    return value


def _lookup(selector: Any, get: Getter) -> Any:
    if not selector:
        return MISSING
    try:
        return resolve(selector, get)
    except KeyError:
        return MISSING


# a File's keys as Dify's file filters name them (list-operator, if-else sub-conditions) → its value's keys
_FILE_KEYS = {"name": "filename", "url": "remote_url"}


def _field(item: dict[str, Any], key: str) -> Any:
    if item.get("dify_model_identity") == "__dify__file__":
        key = _FILE_KEYS.get(key, key)
    return item.get(key, MISSING)


def _sub_conditions(files: list[Any], sub: dict[str, Any], get: Getter) -> bool:
    """Dify's file-array sub-conditions: each sub-condition holds for any file (all files for "not ..."
    operators); the sub-conditions combine with the sub logical operator."""
    results = []
    for cond in sub.get("conditions") or []:
        key, op = str(cond.get("key") or ""), str(cond.get("comparison_operator") or "")
        expected = _render_value(cond.get("value"), get)
        values = [_field(f, key) if isinstance(f, dict) else MISSING for f in files]
        if key == "extension":
            if isinstance(expected, str) and expected and not expected.startswith("."):
                expected = "." + expected
            values = ["." + v if isinstance(v, str) and v and not v.startswith(".") else v for v in values]
        checks = [compare(op, v, expected) for v in values]
        results.append(all(checks) if "not" in op else any(checks))
    return all(results) if sub.get("logical_operator", "and") == "and" else any(results)


def _evaluate_case(case: dict[str, Any], get: Getter) -> tuple[bool, list[dict[str, Any]]]:
    logical = case.get("logical_operator") or "and"
    if logical not in ("and", "or"):
        raise ValueError(f"if-else logical_operator must be 'and' or 'or', got {logical!r}")
    evaluated: list[dict[str, Any]] = []
    for cond in case.get("conditions") or []:
        selector = list(cond.get("variable_selector") or [])
        op = str(cond.get("comparison_operator") or "")
        actual = _lookup(selector, get)
        expected = _render_value(cond.get("value"), get)
        sub = cond.get("sub_variable_condition")
        if (isinstance(sub, dict) and sub.get("conditions") and isinstance(actual, list)
                and op in ("contains", "not contains", "all of")):
            ok = _sub_conditions(actual, sub, get)
        else:
            ok = compare(op, actual, expected)
        evaluated.append({
            "id": cond.get("id"), "variable_selector": selector, "comparison_operator": op,
            "actual_value": None if actual is MISSING else actual, "variable_exists": actual is not MISSING,
            "expected_value": expected, "result": ok,
        })
        if ok if logical == "or" else not ok:  # short-circuit, as Dify
            return ok, evaluated
    results = [c["result"] for c in evaluated]
    return (all(results) if logical == "and" else any(results)), evaluated


def evaluate_cases(data: dict[str, Any], get: Getter) -> tuple[str, bool, list[dict[str, Any]]]:
    """Evaluate an if-else node: ``(selected handle, matched, per-case process data)``.

    Cases run in order and the first that holds wins (its ``case_id`` is the handle); none → ``"false"``.
    Without ``cases`` the legacy top-level ``logical_operator`` + ``conditions`` form one case "true".
    Each process-data entry: ``{case_id, logical_operator, result, conditions: [{id, variable_selector,
    comparison_operator, actual_value, variable_exists, expected_value, result}]}`` (conditions after a
    short-circuit are not evaluated).
    """
    cases = data.get("cases")
    if cases is None:
        cases = [{"case_id": "true", "logical_operator": data.get("logical_operator") or "and",
                  "conditions": data.get("conditions") or []}]
    process: list[dict[str, Any]] = []
    for index, case in enumerate(cases):
        case_id = case.get("case_id")
        if case_id in (None, ""):
            raise ValueError(f"if-else case #{index + 1} has no case_id")
        ok, evaluated = _evaluate_case(case, get)
        process.append({"case_id": str(case_id), "logical_operator": case.get("logical_operator") or "and",
                        "result": ok, "conditions": evaluated})
        if ok:
            return str(case_id), True, process
    return "false", False, process


# -- list-operator ------------------------------------------------------------------------------------
def _item_value(item: Any, key: str | None) -> Any:
    if not key:
        return item
    if isinstance(item, dict):
        return _field(item, key)
    return MISSING


def _sort_kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int) or (isinstance(value, float) and not math.isnan(value)):
        return "number"
    if isinstance(value, str):
        return "str"
    return None


def _order(items: list[Any], key: str, direction: Any) -> list[Any]:
    if direction not in ("asc", "desc"):
        raise ValueError(f"list-operator order_by.value must be 'asc' or 'desc', got {direction!r}")
    values = [_item_value(item, key) for item in items]
    kind = next((k for k in map(_sort_kind, values) if k is not None), None)
    ranked = [(v, item) for v, item in zip(values, items, strict=True) if kind and _sort_kind(v) == kind]
    rest = [item for v, item in zip(values, items, strict=True) if not (kind and _sort_kind(v) == kind)]
    ranked.sort(key=lambda pair: pair[0], reverse=direction == "desc")  # stable in both directions
    return [item for _, item in ranked] + rest


def _whole_number(value: Any, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT_RE.fullmatch(value.strip()) and len(value.strip()) < 20:
        return int(value.strip())
    raise ValueError(f"{what} must be an integer, got {value!r}")


def list_operator(data: dict[str, Any], items: list[Any], *, get: Getter | None = None) -> dict[str, Any]:
    """Apply a list-operator node: filter → extract → order → limit, as Dify.

    Filter conditions use ``compare`` on the item (key "") or the item's ``key`` (objects); all must hold.
    With ``get``, string condition values and the extract serial may hold ``{{#...#}}`` references.
    Returns ``{"result", "first_record", "last_record"}``; raises ``ValueError`` for a bad config
    (e.g. an out-of-range serial) and ``TypeError`` when ``items`` is not a list.
    """
    if not isinstance(items, list | tuple):
        raise TypeError(f"list-operator input must be an array, got {type(items).__name__}")
    result = list(items)
    if not result:
        return {"result": [], "first_record": None, "last_record": None}

    filter_by = data.get("filter_by") or {}
    if filter_by.get("enabled"):
        conditions = []
        for cond in filter_by.get("conditions") or []:
            op = str(cond.get("comparison_operator") or "")
            if _ALIASES.get(op, op) not in OPERATORS:
                raise ValueError(f"unsupported comparison operator: {op!r}")
            conditions.append((str(cond.get("key") or ""), op, _render_value(cond.get("value"), get)))
        result = [item for item in result
                  if all(compare(op, _item_value(item, key), expected) for key, op, expected in conditions)]

    extract_by = data.get("extract_by") or {}
    if extract_by.get("enabled"):
        serial_value = _render_value(extract_by.get("serial"), get)
        serial = _whole_number(serial_value, "list-operator extract_by.serial")
        if not 1 <= serial <= len(result):
            raise ValueError(f"list-operator extract_by.serial {serial} is out of range: "
                             f"the list has {len(result)} item(s) and serials start at 1")
        result = [result[serial - 1]]

    order_by = data.get("order_by") or {}
    if order_by.get("enabled"):
        result = _order(result, str(order_by.get("key") or ""), order_by.get("value") or "asc")

    limit = data.get("limit") or {}
    if limit.get("enabled"):
        size = _whole_number(limit.get("size"), "list-operator limit.size")
        if size < 0:
            raise ValueError(f"list-operator limit.size must be >= 0, got {size}")
        result = result[:size]

    return {"result": result, "first_record": result[0] if result else None,
            "last_record": result[-1] if result else None}


# -- variable-aggregator ------------------------------------------------------------------------------
def aggregate(data: dict[str, Any], get: Getter) -> dict[str, Any]:
    """``{"output": first non-None variable}``; with ``advanced_settings.group_enabled``,
    ``{group_name: {"output": ...}}`` per group. Missing variables are skipped; none found → None."""

    def first(selectors: Any) -> Any:
        for selector in selectors or []:
            value = _lookup(selector, get)
            if value is not MISSING and value is not None:
                return value
        return None

    advanced = data.get("advanced_settings") or {}
    if advanced.get("group_enabled"):
        out: dict[str, Any] = {}
        for index, group in enumerate(advanced.get("groups") or []):
            name = group.get("group_name")
            if not name:
                raise ValueError(f"variable-aggregator group #{index + 1} has no group_name")
            out[str(name)] = {"output": first(group.get("variables"))}
        return out
    return {"output": first(data.get("variables"))}


# -- type coercion (code outputs, parameter-extractor) ------------------------------------------------
_SCALARS = ("string", "number", "boolean", "object")
TYPES = (*_SCALARS, "select", *(f"array[{t}]" for t in ("string", "number", "object", "boolean")))


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    if isinstance(value, str):
        return text
    kind = ("boolean" if isinstance(value, bool) else "number" if isinstance(value, int | float)
            else "object" if isinstance(value, dict) else "array" if isinstance(value, list | tuple)
            else "null" if value is None else type(value).__name__)
    return f"{kind} {text}"


def _coerce_scalar(value: Any, type_name: str) -> Any:
    if type_name == "string":
        if isinstance(value, str):
            return value
    elif type_name == "number":
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {value!r}")
        number = _to_number(value)
        if number is not None:
            if isinstance(number, float) and not math.isfinite(number):
                raise ValueError(f"expected a finite number, got {value!r}")
            return number
    elif type_name == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
    elif type_name == "object":
        if isinstance(value, dict):
            return value
        if isinstance(value, str):
            try:
                loaded = json.loads(value)
            except ValueError:
                loaded = None
            if isinstance(loaded, dict):
                return loaded
    raise ValueError(f"expected {type_name}, got {_describe(value)}")


def loop_value(value: Any, var_type: Any) -> Any:
    """A loop variable's starting value as its declared ``var_type`` (a constant as the editor saves it: numbers
    may be text, arrays and objects JSON text); a type Plexus does not know keeps the value as it is."""
    type_name = normalize_type(var_type)
    return value if type_name == "any" else coerce(value, type_name)


def coerce(value: Any, type_name: str) -> Any:
    """Check/convert ``value`` to a Dify variable type; ``ValueError`` with a precise message otherwise.

    None passes through as None (the caller decides whether the value is required). Numbers: ints stay
    ints, numeric strings are converted, NaN/inf and booleans are refused. Booleans: bools and
    "true"/"false" strings. Objects and arrays also accept their JSON text. ``select`` is a string.
    """
    if value is None:
        return None
    if type_name == "select":
        type_name = "string"
    if type_name in _SCALARS:
        return _coerce_scalar(value, type_name)
    if type_name.startswith("array[") and type_name.endswith("]") and type_name[6:-1] in _SCALARS:
        inner = type_name[6:-1]
        seq = value
        if isinstance(seq, str):
            try:
                seq = json.loads(seq)
            except ValueError:
                raise ValueError(f"expected {type_name}, got {_describe(value)}") from None
        if not isinstance(seq, list | tuple):
            raise ValueError(f"expected {type_name}, got {_describe(value)}")
        out = []
        for index, item in enumerate(seq):
            try:
                out.append(_coerce_scalar(item, inner))
            except ValueError as e:
                raise ValueError(f"expected {type_name}: item {index}: {e}") from None
        return out
    raise ValueError(f"unsupported type {type_name!r} (expected one of {', '.join(TYPES)})")
