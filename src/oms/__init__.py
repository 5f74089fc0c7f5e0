"""OMS: an order management service."""
