"""The event log: the SQLite file, its ordered migrations and its SQL views."""
