"""Background processing: the Celery app, the `process_order` task and how it is dispatched."""
