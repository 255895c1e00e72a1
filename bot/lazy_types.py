"""aiogram imported with its Telegram types left to be built when first used, not all at once at import.

aiogram's ``types`` package ends by calling ``model_rebuild`` on each of its ~500 pydantic models with one
namespace holding all of them (their annotations name each other, imported only for type checkers), and that
builds every model's validator then and there: 1.7 s of the 3.3 s of CPU that importing aiogram costs on a quiet
two-core machine, and several times that on a busy one. A restarted bot answers nobody until its import is done
(bench.crash: on a loaded machine, starts slower than the next kill left updates unanswered), and most of those
models (stickers, payments, games, business accounts, rich blocks) never reach a residents' bot.

The models are declared with ``defer_build``: pydantic builds a deferred model's validator on its first use,
resolving its annotations in the namespace of the model's module. So while aiogram is imported, a rebuild with
that namespace only adds the names it lacks to the model's module, and each validator is built when an update or
a request first needs it (an update with a message and a callback query: about 0.1 s, once).
"""

from __future__ import annotations

import sys
from typing import Any

from pydantic import BaseModel


def import_aiogram() -> None:
    """Import aiogram with its types deferred (nothing to do once aiogram is imported)."""
    if "aiogram" in sys.modules:
        return
    rebuild = BaseModel.__dict__["model_rebuild"]

    def namespace_now_build_later(
        cls: type[BaseModel], *, force: bool = False, _types_namespace: dict[str, Any] | None = None, **options: Any
    ) -> bool | None:
        if _types_namespace is None or force or not cls.model_config.get("defer_build"):
            return rebuild.__func__(cls, force=force, _types_namespace=_types_namespace, **options)  # type: ignore[no-any-return]
        module = vars(sys.modules[cls.__module__])
        for name, value in _types_namespace.items():
            module.setdefault(name, value)
        return None

    BaseModel.model_rebuild = classmethod(namespace_now_build_later)  # type: ignore[assignment, method-assign]
    try:
        import aiogram  # noqa: F401
    finally:
        BaseModel.model_rebuild = rebuild  # type: ignore[method-assign]
