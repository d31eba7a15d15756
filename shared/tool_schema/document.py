"""Reading provider documents and making their JSON schemas self-contained: JSON/YAML loading with
the 1 MB size limit, and ``_Resolver``, which expands local ``$ref``s (recursive ones cut after
``MAX_REF_REPEAT`` levels), converts OpenAPI-only keywords (``nullable``, boolean ``exclusiveMinimum``),
strips the ones the model does not need (``example``, ``xml``, ``discriminator``, ``x-*`` …) and drops
``readOnly`` properties because a request never sends them; plus the ``allOf`` merge the OpenAPI
request-body handling relies on.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from typing import Any
from urllib.parse import unquote

import orjson
import yaml

from shared.tool_schema.spec import (
    _SCHEMA_LISTS,
    _SCHEMA_MAPS,
    _SCHEMA_SINGLE,
    _STRIP_KEYWORDS,
    MAX_DOCUMENT_BYTES,
    MAX_NESTING,
    MAX_REF_REPEAT,
    MAX_SCHEMA_NODES,
    ToolSchemaError,
    _kind,
)

# --------------------------------------------------------------------------------------------------
# loading


def _load_document(text: str) -> Any:
    # len() counts characters, never more than bytes: the cheap check first, then the exact one.
    if len(text) > MAX_DOCUMENT_BYTES or len(text.encode("utf-8")) > MAX_DOCUMENT_BYTES:
        raise ToolSchemaError(f"the document is larger than {MAX_DOCUMENT_BYTES // 1024} KB (1 MB)")
    if not text.strip():
        raise ToolSchemaError("the document is empty")
    if text.lstrip().startswith(("{", "[")):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass  # flow-style YAML also starts with "{": let the YAML parser have a go
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # same as yaml.safe_load, in C when available
    try:
        return yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        raise ToolSchemaError(f"the document is neither valid JSON nor valid YAML: {exc}") from None
    except RecursionError:
        raise ToolSchemaError("the document is nested too deeply") from None


def _check_size(document: dict[str, Any]) -> None:
    """The 1 MB limit for a document handed over already parsed."""
    try:
        size = len(orjson.dumps(document, default=str, option=orjson.OPT_NON_STR_KEYS))
    except orjson.JSONEncodeError as exc:
        raise ToolSchemaError(f"the document cannot be serialised as JSON: {exc}") from None
    if size > MAX_DOCUMENT_BYTES:
        raise ToolSchemaError(f"the document is larger than {MAX_DOCUMENT_BYTES // 1024} KB (1 MB)")


# --------------------------------------------------------------------------------------------------
# $ref resolution and schema cleaning


class _Resolver:
    """Expands local $refs against ``root`` and cleans schemas; counts every node it produces."""

    def __init__(self, root: Any) -> None:
        self.root = root
        self.nodes = 0
        self.active: Counter[str] = Counter()  # $refs being expanded on the current branch

    def _tick(self) -> None:
        self.nodes += 1
        if self.nodes > MAX_SCHEMA_NODES:
            raise ToolSchemaError(
                f"the schemas are too large once $refs are expanded (more than {MAX_SCHEMA_NODES} nodes)")

    def lookup(self, ref: Any, where: str) -> tuple[Any, str]:
        """The target of a local ``#/...`` JSON pointer and a label for errors inside it."""
        if not isinstance(ref, str):
            raise ToolSchemaError(f"{where}: $ref must be a string, got {_kind(ref)}")
        if not ref.startswith("#"):
            raise ToolSchemaError(
                f"{where}: external $ref '{ref}' is not supported; move the definition into "
                "components and refer to it as '#/components/...'")
        if not ref.startswith("#/"):
            raise ToolSchemaError(f"{where}: $ref '{ref}' is not a JSON pointer like '#/components/...'")
        node = self.root
        parts = [unquote(p).replace("~1", "/").replace("~0", "~") for p in ref[2:].split("/")]
        for part in parts:
            if isinstance(node, dict):
                if part in node:
                    node = node[part]
                    continue
                # YAML may have turned a key such as 200 into a number
                match = next((v for k, v in node.items() if str(k) == part), _MISSING)
                if match is not _MISSING:
                    node = match
                    continue
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
                continue
            raise ToolSchemaError(f"{where}: $ref '{ref}' not found")
        return node, ".".join(parts)

    def deref(self, node: Any, where: str) -> tuple[Any, str]:
        """Follow a chain of $refs to a parameter / requestBody / path item object."""
        for _ in range(16):
            if not (isinstance(node, dict) and "$ref" in node):
                return node, where
            node, where = self.lookup(node["$ref"], where)
        raise ToolSchemaError(f"{where}: circular $ref")

    def schema(self, node: Any, where: str, depth: int = 0) -> Any:
        """A cleaned, $ref-free copy of a schema (a dict, or a JSON Schema boolean)."""
        out = self._schema(node, where, depth)
        if isinstance(out, dict):
            out.pop("readOnly", None)
        return out

    def _schema(self, node: Any, where: str, depth: int) -> Any:
        # Keeps a "readOnly": True marker so the caller (properties) can drop the property.
        if isinstance(node, bool):
            return node
        if not isinstance(node, dict):
            raise ToolSchemaError(f"{where}: a schema must be an object, got {_kind(node)}")
        if depth > MAX_NESTING:
            raise ToolSchemaError(f"{where}: schema nested deeper than {MAX_NESTING} levels")
        self._tick()
        if "$ref" in node:
            ref = node["$ref"]
            if isinstance(ref, str) and self.active[ref] >= MAX_REF_REPEAT:
                return {"type": "object"}  # recursive schema: a few levels are plenty for the model
            target, target_where = self.lookup(ref, where)
            if isinstance(target, bool):
                return target
            if not isinstance(target, dict):
                raise ToolSchemaError(f"{where}: $ref '{ref}' points at {_kind(target)}, not a schema")
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            merged = {**target, **siblings} if siblings else target  # 3.1: siblings refine the target
            self.active[ref] += 1
            try:
                return self._schema(merged, target_where, depth + 1)
            finally:
                self.active[ref] -= 1

        out: dict[str, Any] = {}
        read_only_props: set[str] = set()
        for raw_key, value in node.items():
            key = raw_key if isinstance(raw_key, str) else str(raw_key)
            at = f"{where}.{key}"
            if key in _STRIP_KEYWORDS or key.startswith("x-") or key in ("nullable", "readOnly"):
                continue
            if key == "properties":
                if not isinstance(value, dict):
                    raise ToolSchemaError(f"{at}: must be an object of property schemas, got {_kind(value)}")
                props: dict[str, Any] = {}
                for raw_name, sub in value.items():
                    name = str(raw_name)
                    cleaned = self._schema(sub, f"{at}.{name}", depth + 1)
                    if isinstance(cleaned, dict) and cleaned.pop("readOnly", False) is True:
                        read_only_props.add(name)  # server-set (id, created_at): never sent
                        continue
                    props[name] = cleaned
                out[key] = props
            elif key in _SCHEMA_MAPS:
                if not isinstance(value, dict):
                    raise ToolSchemaError(f"{at}: must be an object of schemas, got {_kind(value)}")
                out[key] = {str(k): self.schema(v, f"{at}.{k}", depth + 1) for k, v in value.items()}
            elif key in _SCHEMA_LISTS or (key == "items" and isinstance(value, list)):
                if not isinstance(value, list):
                    raise ToolSchemaError(f"{at}: must be a list of schemas, got {_kind(value)}")
                out[key] = [self.schema(v, f"{at}[{i}]", depth + 1) for i, v in enumerate(value)]
            elif key in _SCHEMA_SINGLE or key == "items":
                out[key] = self.schema(value, at, depth + 1)
            elif key == "required":
                if isinstance(value, bool):
                    continue  # a common 3.0 mistake (`required: true` on a property): meaningless here
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ToolSchemaError(f"{at}: must be a list of property names")
                out[key] = list(value)
            elif key in ("exclusiveMinimum", "exclusiveMaximum") and isinstance(value, bool):
                continue  # OpenAPI 3.0 boolean form: converted below
            else:
                out[key] = self.literal(value, at, depth + 1)

        if read_only_props and "required" in out:
            out["required"] = [r for r in out["required"] if r not in read_only_props]
        for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if node.get(exclusive) is True and bound in out:
                out[exclusive] = out.pop(bound)  # 3.0 {minimum: 5, exclusiveMinimum: true} → 2020-12 form
        if node.get("nullable") is True:
            out = _make_nullable(out)
        if node.get("readOnly") is True:
            out["readOnly"] = True
        return out

    def literal(self, value: Any, where: str, depth: int) -> Any:
        """A JSON-safe copy of a keyword's value (enum, default, description, …)."""
        if depth > MAX_NESTING:
            raise ToolSchemaError(f"{where}: nested deeper than {MAX_NESTING} levels")
        self._tick()
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
            raise ToolSchemaError(f"{where}: integer too large for JSON storage")
        if value is None or isinstance(value, str | bool | int):
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ToolSchemaError(f"{where}: {value} is not a valid JSON number")
            return value
        if isinstance(value, dict):
            return {str(k): self.literal(v, f"{where}.{k}", depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.literal(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
        if isinstance(value, set | frozenset):  # YAML !!set: sort so the output is deterministic
            return [self.literal(v, where, depth + 1) for v in sorted(value, key=repr)]
        if isinstance(value, dt.date):  # YAML turns an unquoted 2024-01-01 into a date
            return value.isoformat()
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        return str(value)


_MISSING = object()


def _make_nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI 3.0 ``nullable: true`` → a JSON-schema type list (or anyOf when there is no type)."""
    if not schema:
        return schema  # {} already accepts null
    kind = schema.get("type")
    if isinstance(kind, str):
        if kind != "null":
            schema["type"] = [kind, "null"]
    elif isinstance(kind, list):
        if "null" not in kind:
            schema["type"] = [*kind, "null"]
    else:
        return {"anyOf": [schema, {"type": "null"}]}
    if isinstance(schema.get("enum"), list) and None not in schema["enum"]:
        schema["enum"] = [*schema["enum"], None]  # else the enum alone would still forbid null
    return schema


def _is_object_schema(schema: Any) -> bool:
    if not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict):
        return False
    kind = schema.get("type")
    return kind is None or kind == "object" or (isinstance(kind, list) and "object" in kind)


_MERGEABLE_KEYS = frozenset({"type", "properties", "required", "description", "title", "additionalProperties"})


def _merge_all_of(schema: Any) -> Any:
    """Flatten ``allOf`` of plain object schemas (the usual "Base + extra fields" pattern) so its
    properties can become top-level tool parameters; anything fancier stays one whole body."""
    if not isinstance(schema, dict) or not isinstance(schema.get("allOf"), list):
        return schema
    parts = [_merge_all_of(part) for part in schema["allOf"]]
    outer = {k: v for k, v in schema.items() if k != "allOf"}
    properties: dict[str, Any] = {}
    required: list[str] = []
    for part in [*parts, outer]:
        if not isinstance(part, dict) or not set(part) <= _MERGEABLE_KEYS or part.get("type", "object") != "object":
            return schema
        properties.update(part.get("properties") or {})
        required.extend(r for r in part.get("required") or [] if r not in required)
    merged = {**outer, "type": "object", "properties": properties}
    if required:
        merged["required"] = required
    return merged
