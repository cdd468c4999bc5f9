"""FormForge: a resumable, chunked upload server (tus 1.0.0 and REST) on Tornado."""

__version__ = "0.1.0"
