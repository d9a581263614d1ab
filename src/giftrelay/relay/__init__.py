"""The relay: the HTTP and WebSocket server, each connection's session, and the
fan-out of every stream's events to its viewers."""
