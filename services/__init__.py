"""The five Plexus services and the module graph that composes them (see stack.py)."""
