"""STUB: replaced by the engine work (issue 3)."""
