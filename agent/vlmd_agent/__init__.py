"""vlmd-agent: the model-side half of vlmd (watchdog, API wrapper, backends, outbox)."""

__version__ = "0.1.0"
