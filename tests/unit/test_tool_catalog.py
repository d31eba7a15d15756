"""Built-in tool providers named the Dify 1.x way: by the plugin that has them."""

from __future__ import annotations

import pytest

from shared.tool_catalog import BUILTIN_TOOLS, builtin_provider


@pytest.mark.parametrize(("given", "provider"), [
    ("time", "time"),  # its own name
    ("langgenius/time/time", "time"),  # a tool entry's provider id in a 1.x DSL
    ("langgenius/qrcode:0.0.2@3e4f", "qrcode"),  # the plugin to install
    ("langgenius/time", "time"),
    ("langgenius/time/other", None),  # a plugin's provider has the plugin's name
    ("someone/time/time", None),  # another author's plugin is not the built-in one
    ("langgenius/searxng/searxng", None),  # a plugin Plexus has no built-in for
    ("", None),
])
def test_builtin_provider(given: str, provider: str | None) -> None:
    assert builtin_provider(given) == provider
    if provider is not None:
        assert any(p == provider for p, _ in BUILTIN_TOOLS)
