"""`formforge upload`: the command-line tus client (installed with the `client` extra)."""
