"""Workflow engine: graph execution, node implementations and their pure logic."""
