"""The daemon's live state: the fold kept current, the feed, liveness and replay."""
