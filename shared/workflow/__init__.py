"""Dify workflow graphs (``workflows.graph``): parse, validate, and inspect variable references.

``parse_graph`` turns the stored JSON into a ``Graph`` (structure only); ``validate_graph`` applies the
console's save/publish rules and raises ``GraphError`` naming the node and field; ``selectors`` and
``declared_outputs`` expose what a node reads and writes. Layout: ``graph`` (model, parsing, selectors,
types) and ``validate`` (the rules). Import from this package, not from the submodules.
"""

from shared.workflow.graph import (
    GRAPH_MODES,
    NODE_TYPES,
    SYS_VARIABLES,
    TEMPLATE_RE,
    VALUE_TYPES,
    Edge,
    Graph,
    GraphError,
    Node,
    declared_outputs,
    parse_graph,
    selectors,
)
from shared.workflow.validate import validate_graph

__all__ = [
    "GRAPH_MODES",
    "NODE_TYPES",
    "SYS_VARIABLES",
    "TEMPLATE_RE",
    "VALUE_TYPES",
    "Edge",
    "Graph",
    "GraphError",
    "Node",
    "declared_outputs",
    "parse_graph",
    "selectors",
    "validate_graph",
]
