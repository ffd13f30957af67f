"""The durable outbox: events spooled to disk, then POSTed in batches."""
