"""Hooks: the runner (`runner.py`) that calls each configured target through its transport
(HTTP, command, Python callable) with the JSON object the README describes; it implements
`formforge.core.hooks.Hooks`."""
