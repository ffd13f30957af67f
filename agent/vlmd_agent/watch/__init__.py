"""Watching the wrapper: GPU and RAM sampling, heartbeats, death and hangs."""
