"""Constraints shared by several request schemas."""

from __future__ import annotations

# PostgreSQL text and JSONB cannot hold U+0000: refuse it at the edge (422), not in the database.
NO_NUL = r"^[^\x00]*$"
