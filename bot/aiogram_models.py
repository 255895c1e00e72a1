"""aiogram's Telegram types, built when first used instead of all at import.

Importing ``aiogram.types`` builds the pydantic schemas of all its ~400 models at once (about 2.5 s of CPU here,
half of the bot's start-up), although the bot uses a few dozen. Its models are declared with ``defer_build``,
but the import then calls ``model_rebuild`` on each to resolve their forward references. Here that call only
keeps the namespace it was given, so that pydantic builds a model, with the same namespace, the first time it
validates or serialises one. After a crash the restarted bot is back this much sooner (bench/crash.py's
resume figure counts the start-up).
"""

from __future__ import annotations

import sys
from typing import Any

from pydantic import BaseModel

_AIOGRAM_TYPES = "aiogram.types"


def defer_building() -> None:
    """Call before anything imports aiogram; does nothing once ``aiogram.types`` is imported."""
    if _AIOGRAM_TYPES in sys.modules:
        return
    rebuild = BaseModel.model_rebuild.__func__  # type: ignore[attr-defined]

    def keep_namespace(cls: type[BaseModel], **kwargs: Any) -> bool | None:
        namespace = kwargs.get("_types_namespace")
        if namespace is not None and not kwargs.get("force") and cls.__module__.startswith(_AIOGRAM_TYPES + "."):
            # The names the deferred build resolves, also when another model (a method) builds this one inside
            # its own schema: there only the model's module is searched.
            module = vars(sys.modules[cls.__module__])
            for name, value in namespace.items():
                module.setdefault(name, value)
            return None
        kwargs["_parent_namespace_depth"] = kwargs.get("_parent_namespace_depth", 2) + 1
        return rebuild(cls, **kwargs)  # type: ignore[no-any-return]

    BaseModel.model_rebuild = classmethod(keep_namespace)  # type: ignore[method-assign, assignment]
    try:
        import aiogram.types  # noqa: F401 - the import whose rebuilds are deferred
    finally:
        BaseModel.model_rebuild = classmethod(rebuild)  # type: ignore[method-assign, assignment]
