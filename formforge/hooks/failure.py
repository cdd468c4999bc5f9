"""The one way a hook call fails, whatever its transport."""


class HookFailed(Exception):
    """A target failed, timed out or answered something that is not a JSON object."""
