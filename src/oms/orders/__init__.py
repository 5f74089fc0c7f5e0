"""Orders: creation, status machine, listing and idempotent creation."""
