"""Domain events: the transactional outbox and the `new_order` message."""
