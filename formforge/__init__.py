"""FormForge: a resumable, chunked upload server (tus 1.0.0 and REST) on Tornado.

`FormForge` mounts it in any Tornado application; `Settings` configures it (README,
"In your own Tornado app"). Both are imported on first use, so `formforge upload` and
`python -m formforge` do not pay for the server's imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from formforge.app import FormForge
    from formforge.config import Settings

__all__ = ["FormForge", "Settings"]


def __getattr__(name: str) -> Any:
    if name == "FormForge":
        from formforge.app import FormForge

        return FormForge
    if name == "Settings":
        from formforge.config import Settings

        return Settings
    raise AttributeError(f"module 'formforge' has no attribute {name!r}")
