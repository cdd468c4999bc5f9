"""Process tuning and process management: the event loop, malloc and gc, worker processes."""
