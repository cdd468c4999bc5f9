"""Socket.IO rooms per upload, fed by the event bus (namespace, bridge, fan-out)."""
