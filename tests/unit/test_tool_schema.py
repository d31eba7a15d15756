"""Custom tool providers: OpenAPI 3 / webhook definitions → ToolSpecs, every refusal, and
prepare_request turning a tool call back into an HTTP request."""

from __future__ import annotations

import copy

import orjson
import pytest
import yaml

from shared.tool_schema import (
    MAX_SCHEMA_NODES,
    PreparedRequest,
    ToolSchemaError,
    ToolSpec,
    parse_openapi,
    parse_provider_schema,
    parse_webhook,
    prepare_request,
)

ORDERS_YAML = """
openapi: 3.0.3
info: {title: Orders, version: "1.0"}
servers:
  - url: "{scheme}://api.example.com/{base}"
    variables:
      scheme: {default: https, enum: [https, http]}
      base: {default: v1}
paths:
  /orders:
    get:
      operationId: listOrders
      summary: List orders
      description: Newest first.
      parameters:
        - name: status
          in: query
          description: Only orders in this state
          schema: {type: string, enum: [open, shipped, cancelled], example: open}
        - name: tag
          in: query
          schema: {type: array, items: {type: string}}
        - name: limit
          in: query
          required: true
          schema: {type: integer, minimum: 1, maximum: 100, default: 20, exclusiveMinimum: false}
        - name: X-Request-Id
          in: header
          schema: {type: string, format: uuid}
        - name: Authorization
          in: header
          schema: {type: string}
        - name: session
          in: cookie
          schema: {type: string}
    post:
      operationId: createOrder
      summary: Create an order
      x-plexus-timeout: 12.5
      x-plexus-rate-limit: 30
      requestBody:
        $ref: '#/components/requestBodies/NewOrder'
  /orders/{id}:
    parameters:
      - $ref: '#/components/parameters/OrderId'
      - name: verbose
        in: query
        schema: {type: boolean}
    get:
      operationId: getOrder
      summary: Get one order
      deprecated: true
      parameters:
        - name: verbose
          in: query
          description: operation-level wins
          schema: {type: boolean, default: false}
    patch:
      operationId: updateOrder
      requestBody:
        required: true
        content:
          application/merge-patch+json:
            schema: {$ref: '#/components/schemas/OrderPatch'}
          text/plain:
            schema: {type: string}
  /categories:
    servers:
      - url: https://catalog.example.com
    get:
      operationId: listCategories
      responses: {"200": {description: ok}}
    post:
      operationId: createCategory
      requestBody:
        content:
          application/json:
            schema: {$ref: '#/components/schemas/Category'}
components:
  parameters:
    OrderId:
      name: id
      in: path
      description: The order id
      schema: {type: string, example: ord_123}
  requestBodies:
    NewOrder:
      required: true
      content:
        application/json:
          schema: {$ref: '#/components/schemas/NewOrder'}
  schemas:
    Money:
      type: object
      required: [amount, currency]
      properties:
        amount: {type: number, exclusiveMinimum: true, minimum: 0}
        currency: {type: string, pattern: '^[A-Z]{3}$', xml: {name: cur}}
    NewOrder:
      type: object
      required: [items, total, id]
      discriminator: {propertyName: kind}
      externalDocs: {url: https://docs.example.com}
      properties:
        id: {type: string, readOnly: true}
        items:
          type: array
          items:
            type: object
            properties:
              sku: {type: string}
              quantity: {type: integer, minimum: 1}
        total: {$ref: '#/components/schemas/Money'}
        note: {type: string, nullable: true, x-internal: yes}
        priority: {type: string, enum: [low, high], nullable: true}
        placed_on: {type: string, format: date, default: 2024-01-31}
        example: {type: string, description: a property really named example}
    OrderPatch:
      type: object
      properties:
        note: {type: string}
        status: {type: string, deprecated: true}
    Category:
      type: object
      properties:
        name: {type: string}
        parent: {$ref: '#/components/schemas/Category'}
        children:
          type: array
          items: {$ref: '#/components/schemas/Category'}
"""


def by_name(specs: list[ToolSpec]) -> dict[str, ToolSpec]:
    return {spec.name: spec for spec in specs}


@pytest.fixture(scope="module")
def orders() -> dict[str, ToolSpec]:
    return by_name(parse_openapi(ORDERS_YAML))


# --------------------------------------------------------------------------------------------------
# OpenAPI 3.0 YAML


def test_operations_become_tools_in_document_order(orders: dict[str, ToolSpec]) -> None:
    assert list(orders) == ["listOrders", "createOrder", "getOrder", "updateOrder", "listCategories",
                            "createCategory"]
    assert {n: s.method for n, s in orders.items()} == {
        "listOrders": "GET", "createOrder": "POST", "getOrder": "GET", "updateOrder": "PATCH",
        "listCategories": "GET", "createCategory": "POST"}


def test_server_variables_and_path_level_servers(orders: dict[str, ToolSpec]) -> None:
    assert orders["listOrders"].url == "https://api.example.com/v1/orders"
    assert orders["getOrder"].url == "https://api.example.com/v1/orders/{id}"
    assert orders["listCategories"].url == "https://catalog.example.com/categories"


def test_server_url_argument_wins() -> None:
    specs = by_name(parse_openapi(ORDERS_YAML, server_url="http://localhost:8080/api/"))
    assert specs["getOrder"].url == "http://localhost:8080/api/orders/{id}"
    assert specs["listCategories"].url == "http://localhost:8080/api/categories"


def test_query_header_cookie_parameters(orders: dict[str, ToolSpec]) -> None:
    spec = orders["listOrders"]
    assert spec.description == "List orders\n\nNewest first."
    assert spec.locations == {"status": "query", "tag": "query", "limit": "query",
                              "X-Request-Id": "header", "session": "cookie"}  # Authorization ignored
    props = spec.parameters["properties"]
    assert props["status"] == {"type": "string", "enum": ["open", "shipped", "cancelled"],
                               "description": "Only orders in this state"}  # example stripped
    assert props["tag"] == {"type": "array", "items": {"type": "string"}}
    assert props["limit"] == {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}
    assert props["X-Request-Id"] == {"type": "string", "format": "uuid"}
    assert spec.parameters["required"] == ["limit"]
    assert spec.parameters["type"] == "object"
    assert spec.body_mode == "none"
    assert spec.timeout is None and spec.rate_limit_per_minute is None


def test_path_level_parameters_merge_and_deprecated(orders: dict[str, ToolSpec]) -> None:
    spec = orders["getOrder"]
    assert spec.description == "(deprecated) Get one order"
    assert spec.locations == {"id": "path", "verbose": "query"}
    props = spec.parameters["properties"]
    assert props["id"] == {"type": "string", "description": "The order id"}
    assert props["verbose"] == {"type": "boolean", "default": False, "description": "operation-level wins"}
    assert spec.parameters["required"] == ["id"]  # path params are always required


def test_ref_request_body_object_becomes_top_level_parameters(orders: dict[str, ToolSpec]) -> None:
    spec = orders["createOrder"]
    assert spec.body_mode == "properties"
    assert spec.timeout == 12.5 and spec.rate_limit_per_minute == 30
    props = spec.parameters["properties"]
    assert "id" not in props  # readOnly: never sent
    assert list(props) == ["items", "total", "note", "priority", "placed_on", "example"]
    assert set(spec.locations.values()) == {"body"}
    assert spec.parameters["required"] == ["items", "total"]  # "id" dropped with the property
    assert props["total"] == {
        "type": "object", "required": ["amount", "currency"],
        "properties": {"amount": {"type": "number", "exclusiveMinimum": 0},
                       "currency": {"type": "string", "pattern": "^[A-Z]{3}$"}}}
    assert props["items"]["items"]["properties"]["quantity"] == {"type": "integer", "minimum": 1}
    assert props["note"] == {"type": ["string", "null"]}  # nullable converted, x-internal stripped
    assert props["priority"] == {"type": ["string", "null"], "enum": ["low", "high", None]}
    assert props["placed_on"]["default"] == "2024-01-31"  # YAML date → JSON string
    assert props["example"] == {"type": "string", "description": "a property really named example"}
    text = orjson.dumps(spec.parameters).decode()
    for stripped in ("discriminator", "externalDocs", "xml", "readOnly", "nullable", "x-internal", "$ref"):
        assert stripped not in text


def test_plus_json_body_preferred_and_deprecated_keyword_stripped(orders: dict[str, ToolSpec]) -> None:
    spec = orders["updateOrder"]
    assert spec.body_mode == "properties"
    assert spec.locations == {"id": "path", "verbose": "query", "note": "body", "status": "body"}
    assert spec.parameters["properties"]["status"] == {"type": "string"}
    assert spec.parameters["required"] == ["id"]  # the body schema lists none
    assert spec.description == "PATCH /orders/{id}" and spec.url.endswith("/orders/{id}")


def test_recursive_ref_is_cut_after_three_levels(orders: dict[str, ToolSpec]) -> None:
    spec = orders["createCategory"]
    assert spec.parameters["required"] == []  # body not required
    parent = spec.parameters["properties"]["parent"]  # level 2 (the body itself is level 1)
    level3 = parent["properties"]["parent"]
    assert level3["properties"]["parent"] == {"type": "object"}  # the 4th expansion is cut
    assert level3["properties"]["children"]["items"] == {"type": "object"}
    assert parent["properties"]["children"]["items"]["properties"]["name"] == {"type": "string"}


def test_tool_spec_round_trips_through_json(orders: dict[str, ToolSpec]) -> None:
    stored = orjson.dumps([spec.model_dump() for spec in orders.values()])  # what the DB row holds
    restored = [ToolSpec.model_validate(item) for item in orjson.loads(stored)]
    assert restored == list(orders.values())
    for spec in orders.values():
        assert ToolSpec.model_validate(spec.model_dump()) == spec


def test_tool_spec_refuses_inconsistent_rows(orders: dict[str, ToolSpec]) -> None:
    data = orders["getOrder"].model_dump()
    with pytest.raises(ValueError, match="locations"):
        ToolSpec.model_validate({**data, "locations": {"id": "path"}})
    with pytest.raises(ValueError, match="name"):
        ToolSpec.model_validate({**data, "name": "has space"})
    assert ToolSpec.model_validate({**data, "method": "get"}).method == "GET"


# --------------------------------------------------------------------------------------------------
# OpenAPI 3.1 JSON, naming


DOC_31 = {
    "openapi": "3.1.0",
    "info": {"title": "Batch", "version": "1"},
    "servers": [{"url": "https://batch.example.com"}],
    "paths": {
        "/jobs/{job-id}/items": {
            "put": {
                "summary": "Replace the job's items",
                "parameters": [{"name": "job-id", "in": "path", "schema": {"type": "string"}}],
                "requestBody": {
                    "required": True,
                    "description": "All the items",
                    "content": {"application/json": {"schema": {
                        "type": "array",
                        "items": {"type": ["string", "null"], "examples": ["a"]},
                        "maxItems": 50}}},
                },
            },
        },
        "/jobs/{job_id}/items": {"get": {"summary": "List"}},  # derived name collides after sanitising
        "/jobs": {
            "get": {"operationId": "get_jobs_job_id_items"},  # explicit id claims the derived name
            "post": {"operationId": "create job!"},
        },
    },
}


def test_31_json_whole_body_and_naming() -> None:
    specs = parse_openapi(orjson.dumps(DOC_31).decode())
    assert [s.name for s in specs] == ["put_jobs_job-id_items", "get_jobs_job_id_items_2",
                                       "get_jobs_job_id_items", "create_job"]
    put = specs[0]
    assert put.body_mode == "whole"
    assert put.locations == {"job-id": "path", "body": "body"}
    assert put.parameters["properties"]["body"] == {
        "type": "array", "items": {"type": ["string", "null"]}, "maxItems": 50,
        "description": "All the items"}
    assert put.parameters["required"] == ["job-id", "body"]
    # An undeclared template variable still has to be filled in.
    get = specs[1]
    assert get.locations == {"job_id": "path"}
    assert get.parameters == {"type": "object", "properties": {"job_id": {"type": "string"}},
                              "required": ["job_id"]}
    assert ToolSpec.model_validate(put.model_dump()) == put


def test_names_are_deterministic_and_bounded() -> None:
    long_path = "/" + "/".join(["segment"] * 20)
    doc = {"openapi": "3.0.0", "servers": [{"url": "https://x.example.com"}],
           "paths": {long_path: {"get": {}, "post": {"operationId": "a" * 80}},
                     long_path + "/": {"get": {}}}}
    names = [s.name for s in parse_openapi(orjson.dumps(doc).decode())]
    assert names == [s.name for s in parse_provider_schema("openapi", doc)]  # same from a dict, every time
    assert len(set(names)) == 3 and all(len(n) <= 64 for n in names)
    assert names[1] == "a" * 64
    assert names[2] == names[0][:62] + "_2"


def test_dict_and_text_inputs_agree() -> None:
    from_dict = parse_provider_schema("openapi", copy.deepcopy(DOC_31))
    from_text = parse_provider_schema("openapi", yaml.safe_dump(DOC_31, sort_keys=False))
    assert from_dict == from_text


def test_all_of_body_is_flattened() -> None:
    doc = {"openapi": "3.0.0", "servers": [{"url": "https://x.example.com"}],
           "components": {"schemas": {"Base": {"type": "object", "required": ["a"],
                                               "properties": {"a": {"type": "string"}}}}},
           "paths": {"/x": {"post": {"requestBody": {"required": True, "content": {"application/json": {
               "schema": {"allOf": [{"$ref": "#/components/schemas/Base"},
                                    {"properties": {"b": {"type": "integer"}}, "required": ["b"]}]}}}}}}}}
    (spec,) = parse_openapi(orjson.dumps(doc).decode())
    assert spec.body_mode == "properties"
    assert spec.locations == {"a": "body", "b": "body"}
    assert spec.parameters["required"] == ["a", "b"]


def test_description_truncated() -> None:
    doc = {"openapi": "3.0.0", "servers": [{"url": "https://x.example.com"}],
           "paths": {"/x": {"get": {"description": "d" * 5000, "deprecated": True}}}}
    (spec,) = parse_openapi(orjson.dumps(doc).decode())
    assert len(spec.description) == 1024
    assert spec.description.startswith("(deprecated) ddd") and spec.description.endswith("…")


# --------------------------------------------------------------------------------------------------
# refusals


def minimal(**changes: object) -> dict:
    doc = {"openapi": "3.0.0", "info": {"title": "t", "version": "1"},
           "servers": [{"url": "https://api.example.com"}],
           "paths": {"/orders/{id}": {"get": {"operationId": "getOrder", "parameters": [
               {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]}}}}
    doc.update(changes)
    return doc


def refused(doc: object, match: str, **kwargs: object) -> None:
    text = doc if isinstance(doc, str) else orjson.dumps(doc).decode()
    with pytest.raises(ToolSchemaError, match=match):
        parse_openapi(text, **kwargs)


def test_minimal_document_is_fine() -> None:
    (spec,) = parse_openapi(orjson.dumps(minimal()).decode())
    assert spec.url == "https://api.example.com/orders/{id}"


def test_swagger_2_refused() -> None:
    refused({"swagger": "2.0", "info": {}, "paths": {}}, r"^swagger: .*only OpenAPI 3 is supported")
    refused({"openapi": "2.0", "paths": {}}, r"^openapi: version '2.0' is not supported")
    refused({"info": {}}, r"^openapi: missing")


def test_not_a_document() -> None:
    refused("", "empty")
    refused("[1, 2]", "top level")
    refused("openapi: [unclosed", "neither valid JSON nor valid YAML")
    refused("x" * (1024 * 1024 + 1), "larger than 1024 KB")
    refused("é" * (600 * 1024), "larger than")  # 600 K characters but 1.2 MB of UTF-8


def test_no_operations() -> None:
    refused(minimal(paths={}), r"^paths: no operations found")
    refused(minimal(paths={"/x": {"head": {}, "summary": "s"}}), r"^paths: no operations found")


def test_server_url_errors() -> None:
    no_servers = minimal()
    del no_servers["servers"]
    refused(no_servers, r"^servers: missing; add servers\[0\].url")
    refused(minimal(servers=[{"url": "/v1"}]), r"^servers\[0\].url: '/v1' is not an absolute http\(s\) URL; add")
    refused(minimal(servers=[{"url": "ftp://files.example.com"}]), "not an absolute http")
    refused(minimal(servers=[{"url": "https://{region}.example.com"}]), "variable 'region' has no default")
    refused(minimal(), r"^server_url: 'example.com' is not an absolute", server_url="example.com")
    # a relative server is fine when server_url replaces it
    (spec,) = parse_openapi(orjson.dumps(minimal(servers=[{"url": "/v1"}])).decode(),
                            server_url="https://h.example.com/v1")
    assert spec.url == "https://h.example.com/v1/orders/{id}"


def test_missing_and_external_refs() -> None:
    doc = minimal()
    doc["paths"]["/orders/{id}"]["get"]["parameters"][0]["schema"] = {"$ref": "#/components/schemas/Nope"}
    refused(doc, r"^paths\./orders/\{id\}\.get\.parameters\[0\]\.schema: \$ref '#/components/schemas/Nope' not found")
    doc["paths"]["/orders/{id}"]["get"]["parameters"][0]["schema"] = {"$ref": "common.yaml#/Id"}
    refused(doc, r"external \$ref 'common.yaml#/Id' is not supported")
    doc["paths"]["/orders/{id}"]["get"]["parameters"] = [{"$ref": "https://example.com/p.json"}]
    refused(doc, "external \\$ref")
    doc["paths"]["/orders/{id}"]["get"]["parameters"] = [{"$ref": "#/components/parameters/Gone"}]
    refused(doc, r"^paths\./orders/\{id\}\.get\.parameters\[0\]: \$ref '#/components/parameters/Gone' not found")


def test_circular_parameter_ref() -> None:
    doc = minimal(components={"parameters": {"A": {"$ref": "#/components/parameters/B"},
                                             "B": {"$ref": "#/components/parameters/A"}}})
    doc["paths"]["/orders/{id}"]["get"]["parameters"] = [{"$ref": "#/components/parameters/A"}]
    refused(doc, "circular \\$ref")


def test_ref_fan_out_is_bounded() -> None:
    # Each level refers to the next one twice: 2**40 nodes if expanded naively.
    schemas = {f"L{i}": {"type": "object", "properties": {"a": {"$ref": f"#/components/schemas/L{i + 1}"},
                                                          "b": {"$ref": f"#/components/schemas/L{i + 1}"}}}
               for i in range(40)}
    schemas["L40"] = {"type": "string"}
    doc = minimal(components={"schemas": schemas})
    doc["paths"]["/orders/{id}"]["get"]["parameters"][0]["schema"] = {"$ref": "#/components/schemas/L0"}
    refused(doc, f"more than {MAX_SCHEMA_NODES} nodes")


def test_deep_nesting_refused() -> None:
    schema: dict = {"type": "string"}
    for _ in range(150):
        schema = {"type": "array", "items": schema}
    doc = minimal()
    doc["paths"]["/orders/{id}"]["get"]["parameters"][0]["schema"] = schema
    refused(doc, "nested deeper than 100 levels")


def test_yaml_alias_bomb_is_bounded() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 12)]
    bomb = "\n".join(lines) + """
openapi: 3.0.0
servers: [{url: "https://x.example.com"}]
paths:
  /x:
    get:
      parameters:
        - {name: q, in: query, schema: {type: string, enum: *a11}}
"""
    refused(bomb, "too large")


def test_parameter_errors() -> None:
    doc = minimal()
    del doc["paths"]["/orders/{id}"]["get"]["parameters"][0]["schema"]
    refused(doc, r"^paths\./orders/\{id\}\.get: parameter 'id' has no schema$")
    doc = minimal()
    doc["paths"]["/orders/{id}"]["get"]["parameters"][0]["in"] = "body"
    refused(doc, "parameter 'id' has 'in: body'")
    doc = minimal()
    doc["paths"]["/orders/{id}"]["get"]["parameters"].append(
        {"name": "other", "in": "path", "schema": {"type": "string"}})
    refused(doc, "path parameter 'other' does not appear in the path")
    doc = minimal()
    doc["paths"]["/orders/{id}"]["get"]["parameters"].append(
        {"name": "id", "in": "query", "schema": {"type": "string"}})
    refused(doc, "query parameter 'id' clashes with path parameter 'id'")
    doc = minimal()
    doc["paths"]["/orders/{id}"]["get"]["x-plexus-timeout"] = -1
    refused(doc, r"x-plexus-timeout: must be a positive number")
    doc = minimal()
    doc["paths"]["/orders/{id}"]["get"]["x-plexus-rate-limit"] = 1.5
    refused(doc, r"x-plexus-rate-limit: must be a positive integer")


def test_body_property_clash_names_both() -> None:
    doc = minimal()
    doc["paths"]["/orders/{id}"]["put"] = {
        "parameters": [{"name": "id", "in": "path", "schema": {"type": "string"}},
                       {"name": "dry_run", "in": "query", "schema": {"type": "boolean"}}],
        "requestBody": {"content": {"application/json": {"schema": {
            "type": "object", "properties": {"dry_run": {"type": "string"}, "note": {"type": "string"}}}}}}}
    refused(doc, r"^paths\./orders/\{id\}\.put: body property 'dry_run' clashes with query parameter 'dry_run'")
    doc["paths"]["/orders/{id}"]["put"]["parameters"][1]["name"] = "body"
    doc["paths"]["/orders/{id}"]["put"]["requestBody"]["content"]["application/json"]["schema"] = {
        "type": "array", "items": {"type": "string"}}
    refused(doc, "the request body \\(parameter 'body'\\) clashes with query parameter 'body'")


def test_more_than_100_tools() -> None:
    paths = {f"/r{i}": {"get": {}} for i in range(101)}
    doc = minimal(paths=paths)
    with pytest.raises(ToolSchemaError, match="defines 101 tools; at most 100"):
        parse_provider_schema("openapi", doc)
    doc["paths"] = {f"/r{i}": {"get": {}} for i in range(100)}
    assert len(parse_provider_schema("openapi", orjson.dumps(doc).decode())) == 100


def test_oversized_dict_input() -> None:
    doc = minimal(info={"title": "t", "version": "1", "description": "x" * (1024 * 1024)})
    with pytest.raises(ToolSchemaError, match="larger than 1024 KB"):
        parse_provider_schema("openapi", doc)
    with pytest.raises(ToolSchemaError, match="larger than 1024 KB"):
        parse_webhook({**WEBHOOK, "description": "x" * (1024 * 1024)})


def test_unknown_schema_type() -> None:
    with pytest.raises(ToolSchemaError, match="schema_type"):
        parse_provider_schema("graphql", "{}")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# webhook


WEBHOOK = {
    "name": "notify_team",
    "description": "Post a message to the team channel",
    "url": "https://hooks.example.com/notify",
    "parameters": {
        "type": "object",
        "required": ["text"],
        "properties": {
            "text": {"type": "string", "examples": ["hi"]},
            "urgent": {"type": "boolean"},
        },
    },
    "headers": {"X-Hook-Secret": "s3cret"},
    "timeout": 5,
    "rate_limit_per_minute": 10,
}


def test_webhook_post_goes_to_body() -> None:
    spec = parse_webhook(WEBHOOK)
    assert spec.method == "POST" and spec.body_mode == "properties"
    assert spec.locations == {"text": "body", "urgent": "body"}
    assert spec.parameters == {"type": "object", "required": ["text"],
                               "properties": {"text": {"type": "string"}, "urgent": {"type": "boolean"}}}
    assert spec.headers == {"X-Hook-Secret": "s3cret"}
    assert spec.timeout == 5.0 and spec.rate_limit_per_minute == 10
    assert parse_provider_schema("webhook", orjson.dumps(WEBHOOK).decode()) == [spec]
    assert ToolSpec.model_validate(spec.model_dump()) == spec


def test_webhook_get_goes_to_query() -> None:
    spec = parse_webhook({**WEBHOOK, "method": "get"})
    assert spec.method == "GET" and spec.body_mode == "none"
    assert spec.locations == {"text": "query", "urgent": "query"}
    minimal_hook = parse_webhook({"name": "ping", "url": "http://h.example.com/ping"})
    assert minimal_hook.method == "POST" and minimal_hook.parameters["properties"] == {}
    assert prepare_request(minimal_hook, {}).json_body == {}


@pytest.mark.parametrize(("change", "match"), [
    ({"url": None}, r"^webhook.url: missing$"),
    ({"url": "ftp://hooks.example.com"}, r"^webhook.url: 'ftp://hooks.example.com' is not an absolute http\(s\) URL"),
    ({"url": "/relative"}, "webhook.url"),
    ({"name": None}, r"^webhook.name: missing"),
    ({"name": "notify team"}, r"^webhook.name: 'notify team' is not a valid tool name"),
    ({"name": "n" * 65}, "webhook.name"),
    ({"method": "FETCH"}, r"^webhook.method: unknown method 'FETCH'"),
    ({"parameters": {"type": "array"}}, r"^webhook.parameters: must be a JSON schema object"),
    ({"parameters": ["text"]}, r"^webhook.parameters: must be"),
    ({"parameters": {"type": "object", "properties": []}}, r"^webhook.parameters.properties: must be an object"),
    ({"parameters": {"type": "object", "properties": {}, "required": ["x"]}}, "'x' is not one of the properties"),
    ({"parameters": {"type": "object", "properties": {"x": {"type": "strin"}}}},
     r"^webhook.parameters.properties.x.type: "),
    ({"headers": {"Bad Header": "v"}}, "not a valid header name"),
    ({"headers": {"X-Ok": "a\r\nInjected: 1"}}, "without line breaks"),
    ({"timeout": 0}, r"^webhook.timeout: must be a positive number"),
    ({"timeout": "5"}, "webhook.timeout"),
    ({"rate_limit_per_minute": True}, r"^webhook.rate_limit_per_minute: must be a positive integer"),
    ({"description": 5}, "webhook.description: must be a string"),
    ({"rate_limit": 5}, r"^webhook: unknown field 'rate_limit'"),
])
def test_webhook_refusals(change: dict, match: str) -> None:
    definition = {**WEBHOOK, **change}
    definition = {k: v for k, v in definition.items() if v is not None}
    with pytest.raises(ToolSchemaError, match=match):
        parse_webhook(definition)


def test_webhook_not_an_object() -> None:
    with pytest.raises(ToolSchemaError, match="must be an object"):
        parse_webhook("[1]")


# --------------------------------------------------------------------------------------------------
# prepare_request


def test_prepare_request_path_query_header_cookie(orders: dict[str, ToolSpec]) -> None:
    req = prepare_request(orders["getOrder"], {"id": "a/b c", "verbose": True, "made_up": 1})
    assert req == PreparedRequest(method="GET", url="https://api.example.com/v1/orders/a%2Fb%20c",
                                  params=[("verbose", "true")], headers={}, cookies={}, json_body=None,
                                  ignored=["made_up"])
    req = prepare_request(orders["listOrders"], {
        "status": "open", "tag": ["a", "b"], "limit": 10, "X-Request-Id": "r-1", "session": "abc",
        "Authorization": "Bearer stolen"})
    assert req.url == "https://api.example.com/v1/orders"
    assert req.params == [("status", "open"), ("tag", "a"), ("tag", "b"), ("limit", "10")]
    assert req.headers == {"X-Request-Id": "r-1"}
    assert req.cookies == {"session": "abc"}
    assert req.ignored == ["Authorization"]  # the spec dropped it: the model cannot set it
    assert prepare_request(orders["listOrders"], {"limit": 1, "status": None, "X-Request-Id": False}).params \
        == [("limit", "1")]


def test_prepare_request_booleans_and_missing_path_param(orders: dict[str, ToolSpec]) -> None:
    req = prepare_request(orders["getOrder"], {"id": 42, "verbose": False})
    assert req.url.endswith("/orders/42") and req.params == [("verbose", "false")]
    with pytest.raises(ToolSchemaError, match="tool 'getOrder': missing required path parameter 'id'"):
        prepare_request(orders["getOrder"], {"verbose": True})
    assert prepare_request(orders["getOrder"], {"id": ".."}).url.endswith("/orders/%2E%2E")  # not /v1/
    with pytest.raises(ToolSchemaError, match="path parameter 'id' is empty"):
        prepare_request(orders["getOrder"], {"id": ""})
    with pytest.raises(ToolSchemaError, match="must be a JSON object"):
        prepare_request(orders["getOrder"], ["id"])  # type: ignore[arg-type]


def test_prepare_request_body_properties(orders: dict[str, ToolSpec]) -> None:
    args = {"items": [{"sku": "s", "quantity": 2}], "total": {"amount": 5, "currency": "EUR"},
            "note": None, "id": "ignored-readonly"}
    req = prepare_request(orders["createOrder"], args)
    assert req.method == "POST" and req.url == "https://api.example.com/v1/orders"
    assert req.json_body == {"items": [{"sku": "s", "quantity": 2}],
                             "total": {"amount": 5, "currency": "EUR"}, "note": None}
    assert req.ignored == ["id"] and req.params == []


def test_prepare_request_whole_body() -> None:
    put = parse_openapi(orjson.dumps(DOC_31).decode())[0]
    req = prepare_request(put, {"job-id": "j 1", "body": ["a", None]})
    assert req.url == "https://batch.example.com/jobs/j%201/items"
    assert req.json_body == ["a", None] and req.params == []
    assert prepare_request(put, {"job-id": "j"}).json_body is None  # no body given, none sent


def test_prepare_request_webhook_fixed_headers_win() -> None:
    spec = parse_webhook({**WEBHOOK, "method": "DELETE",
                          "parameters": {"type": "object", "properties": {"ids": {"type": "array"},
                                                                          "meta": {"type": "object"}}}})
    req = prepare_request(spec, {"ids": [1, 2], "meta": {"a": 1}})
    assert req.params == [("ids", "1"), ("ids", "2"), ("meta", '{"a":1}')]
    assert req.headers == {"X-Hook-Secret": "s3cret"} and req.json_body is None
    post = parse_webhook(WEBHOOK)
    req = prepare_request(post, {"text": "hi", "urgent": True})
    assert req.json_body == {"text": "hi", "urgent": True} and req.params == []


def test_prepare_request_header_injection_refused() -> None:
    spec = parse_openapi(orjson.dumps(minimal(paths={"/x": {"get": {"parameters": [
        {"name": "X-Trace", "in": "header", "schema": {"type": "string"}}]}}})).decode())[0]
    assert prepare_request(spec, {"X-Trace": "t"}).headers == {"X-Trace": "t"}
    with pytest.raises(ToolSchemaError, match="line break"):
        prepare_request(spec, {"X-Trace": "t\r\nX-Evil: 1"})
