"""The built-in calculator tool: arithmetic on untrusted model output, without eval/exec/compile.

The expression is parsed with ``ast.parse(mode="eval")`` (parsing only, nothing is executed) and the
tree is walked by hand, accepting only numbers, unary +/-, the arithmetic operators, the constants
``pi``/``e``/``tau`` and calls to a fixed table of math functions. Every way to make the process hang
or eat memory is bounded: input length, AST size, integer size (checked *before* ``**`` and ``*``
compute anything), factorial's argument and round's digits; float overflow and division by zero become
clear errors instead of ``inf`` or tracebacks.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

MAX_EXPRESSION_LENGTH = 500
MAX_NODES = 200
MAX_INT_BITS = 10_000  # ~3,000 digits: far below Python's 4,300-digit int→str limit
MAX_FACTORIAL = 170  # the largest n whose factorial still fits in a float
MAX_ROUND_DIGITS = 308  # round(5, -10**9) would build 10**(10**9)

Number = int | float


class CalculatorError(ValueError):
    """The expression is refused or cannot be evaluated; the message says why."""


_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _factorial(n: Number) -> int:
    if isinstance(n, float):
        if not n.is_integer():
            raise CalculatorError("factorial() needs a non-negative integer")
        n = int(n)
    if n < 0:
        raise CalculatorError("factorial() needs a non-negative integer")
    if n > MAX_FACTORIAL:
        raise CalculatorError(f"factorial() is limited to n ≤ {MAX_FACTORIAL}")
    return math.factorial(n)


def _round(x: Number, ndigits: Number | None = None) -> Number:
    if ndigits is None:
        return round(x)
    if not isinstance(ndigits, int):
        raise CalculatorError("round(): the number of digits must be an integer")
    if abs(ndigits) > MAX_ROUND_DIGITS:
        raise CalculatorError(f"round(): the number of digits must be between -{MAX_ROUND_DIGITS} "
                              f"and {MAX_ROUND_DIGITS}")
    return round(x, ndigits)


def _log(x: Number, base: Number | None = None) -> float:
    return math.log(x) if base is None else math.log(x, base)


# name → (function, min args, max args; None = any number)
_FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int | None]] = {
    "sqrt": (math.sqrt, 1, 1),
    "sin": (math.sin, 1, 1),
    "cos": (math.cos, 1, 1),
    "tan": (math.tan, 1, 1),
    "asin": (math.asin, 1, 1),
    "acos": (math.acos, 1, 1),
    "atan": (math.atan, 1, 1),
    "atan2": (math.atan2, 2, 2),
    "log": (_log, 1, 2),
    "log10": (math.log10, 1, 1),
    "log2": (math.log2, 1, 1),
    "exp": (math.exp, 1, 1),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "min": (lambda *a: min(a), 1, None),
    "max": (lambda *a: max(a), 1, None),
    "hypot": (math.hypot, 1, None),
    "degrees": (math.degrees, 1, 1),
    "radians": (math.radians, 1, 1),
    "factorial": (_factorial, 1, 1),
}

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}

_DESCRIPTIONS: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access",
    ast.Subscript: "subscript",
    ast.Lambda: "lambda",
    ast.ListComp: "comprehension",
    ast.SetComp: "comprehension",
    ast.DictComp: "comprehension",
    ast.GeneratorExp: "comprehension",
    ast.Compare: "comparison",
    ast.BoolOp: "boolean operator",
    ast.IfExp: "conditional expression",
    ast.List: "list",
    ast.Tuple: "tuple",
    ast.Set: "set",
    ast.Dict: "dict",
    ast.JoinedStr: "string",
    ast.FormattedValue: "string",
    ast.NamedExpr: "assignment",
    ast.Starred: "starred argument",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.Slice: "slice",
}

_OPERATOR_SYMBOLS: dict[type[ast.AST], str] = {
    ast.MatMult: "@", ast.LShift: "<<", ast.RShift: ">>", ast.BitOr: "|", ast.BitAnd: "&",
    ast.Invert: "~", ast.Not: "not",
}


def _unsupported(node: ast.AST) -> CalculatorError:
    what = _DESCRIPTIONS.get(type(node), type(node).__name__)
    return CalculatorError(f"unsupported element: {what}")


def _check(value: Any) -> Number:
    """Every intermediate result: a finite real number, an int of bounded size."""
    if isinstance(value, complex):
        raise CalculatorError("the result is not a real number")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("the result is too large (float overflow)")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise CalculatorError(f"the result is too large (more than {MAX_INT_BITS} bits)")
    return value


def _power(base: Number, exponent: Number) -> Number:
    # Estimate the size before computing: 10**100000 would take a while and 9**9**9 forever.
    if (isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1
            and exponent * math.log2(abs(base)) > MAX_INT_BITS + 1):
        raise CalculatorError(f"the result is too large (more than {MAX_INT_BITS} bits)")
    return base**exponent


def _apply(op: ast.operator, left: Number, right: Number) -> Number:
    if isinstance(op, ast.Pow):
        return _power(left, right)
    if (isinstance(op, ast.Mult) and isinstance(left, int) and isinstance(right, int)
            and left.bit_length() + right.bit_length() > MAX_INT_BITS + 1):
        raise CalculatorError(f"the result is too large (more than {MAX_INT_BITS} bits)")
    return _BINARY[type(op)](left, right)


def _eval(node: ast.AST) -> Number:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or value is None or value is Ellipsis:
            raise CalculatorError(f"unsupported element: {value!r}")
        if isinstance(value, str | bytes):
            raise CalculatorError("unsupported element: string")
        if isinstance(value, complex):
            raise CalculatorError("unsupported element: complex number")
        if isinstance(value, float) and not math.isfinite(value):
            raise CalculatorError("number too large")  # a literal like 1e999 reads as inf
        return _check(value)
    if isinstance(node, ast.UnaryOp):
        if isinstance(node.op, ast.USub):
            return -_eval(node.operand)
        if isinstance(node.op, ast.UAdd):
            return +_eval(node.operand)
        raise CalculatorError(f"unsupported operator: {_OPERATOR_SYMBOLS.get(type(node.op), '?')}")
    if isinstance(node, ast.BinOp):
        if isinstance(node.op, ast.BitXor):
            raise CalculatorError("'^' is not a power operator here; use ** (e.g. 2**3)")
        if type(node.op) not in _BINARY:
            raise CalculatorError(f"unsupported operator: {_OPERATOR_SYMBOLS.get(type(node.op), '?')}")
        left, right = _eval(node.left), _eval(node.right)
        return _check(_apply(node.op, left, right))
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        if node.id in _FUNCTIONS:
            raise CalculatorError(f"'{node.id}' is a function; call it, e.g. {node.id}(2)")
        raise CalculatorError(f"name '{node.id}' is not defined")
    if isinstance(node, ast.Call):
        return _call(node)
    raise _unsupported(node)


def _call(node: ast.Call) -> Number:
    if not isinstance(node.func, ast.Name):
        raise _unsupported(node.func) if isinstance(node.func, ast.Attribute) else \
            CalculatorError("unsupported element: call of a computed value")
    name = node.func.id
    if name not in _FUNCTIONS:
        raise CalculatorError(f"unknown function '{name}'")
    if node.keywords:
        raise CalculatorError(f"{name}(): keyword arguments are not supported")
    function, least, most = _FUNCTIONS[name]
    count = len(node.args)
    if count < least or (most is not None and count > most):
        wanted = f"{least}" if least == most else f"{least} or {most}" if most else f"at least {least}"
        raise CalculatorError(f"{name}() takes {wanted} argument{'s' if wanted != '1' else ''}, got {count}")
    args = [_eval(arg) for arg in node.args]  # a Starred arg is refused here as "starred argument"
    try:
        return _check(function(*args))
    except ValueError as exc:  # CalculatorError included: re-raised with the function's name
        if isinstance(exc, CalculatorError):
            raise
        raise CalculatorError(f"{name}(): {exc}") from None
    except TypeError as exc:
        raise CalculatorError(f"{name}(): {exc}") from None


def evaluate(expression: str) -> Number:
    """The value of an arithmetic expression, e.g. ``"2 * (3 + 4) ** 2"`` → 98. Ints stay exact
    (``2**10`` → 1024); ``/`` is true division (``7/2`` → 3.5). Raises ``CalculatorError``."""
    if not isinstance(expression, str):
        raise CalculatorError("the expression must be a string")
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise CalculatorError(f"the expression is longer than {MAX_EXPRESSION_LENGTH} characters")
    # Typographic operators models and users paste in.
    text = expression.replace("×", "*").replace("÷", "/").replace("−", "-").strip()
    if not text:
        raise CalculatorError("the expression is empty")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise CalculatorError(f"invalid syntax: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError):  # null bytes, pathological nesting
        raise CalculatorError("invalid expression") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise CalculatorError(f"the expression is too complex (more than {MAX_NODES} elements)")
    try:
        return _eval(tree)
    except ZeroDivisionError:
        raise CalculatorError("division by zero") from None
    except OverflowError:
        raise CalculatorError("the result is too large (overflow)") from None


def format_result(value: Number) -> str:
    """Ints as plain digits, floats as ``repr`` (shortest round-tripping form, e.g. ``1e+16``)."""
    if isinstance(value, bool):
        raise TypeError("format_result() takes an int or a float")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    raise TypeError("format_result() takes an int or a float")
