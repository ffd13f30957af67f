"""The HTTP and WebSocket face of the daemon: routes, auth, images, metrics."""
