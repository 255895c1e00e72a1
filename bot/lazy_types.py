"""aiogram imported with its Telegram types and methods left to be built when first used, not all at import.

aiogram's ``types`` package ends by calling ``model_rebuild`` on each of its ~500 pydantic models with one
namespace holding all of them (their annotations name each other, imported only for type checkers), and that
builds every model's validator then and there; its ~170 methods (``SendMessage`` and the rest) are built as they
are declared, each building again the types its fields hold. Together that is three quarters of the CPU that
importing aiogram costs (3.8–4.2 s of 5 on this two-core machine at load 4), and a restarted bot answers nobody
until its import is done (bench.crash: on a loaded machine, starts slower than the next kill left updates
unanswered). Most of those models (stickers, payments, games, business accounts, rich blocks) never reach a
residents' bot.

pydantic builds a model declared with ``defer_build`` on its first use, resolving its annotations in the namespace
of the model's module. aiogram's types are declared so; while aiogram is imported, a rebuild with aiogram's
namespace only adds the names the model's module lacks, and its methods' base class is declared so as soon as its
module has run. Each validator is then built when an update or a request first needs it (an update with a message
and a callback query, and a message sent: about 0.2 s, once). Every other model, and every rebuild after the
import, goes through pydantic unchanged.
"""

from __future__ import annotations

import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from pydantic import BaseModel

METHODS_BASE = "aiogram.methods.base"


class _MethodsDeclaredDeferred(importlib.machinery.PathFinder):
    """Finds aiogram's methods' base module as Python would and, once it has run, has its ``TelegramMethod``
    declare ``defer_build`` for the methods declared after it."""

    @classmethod
    def find_spec(
        cls, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != METHODS_BASE:
            return None
        spec = super().find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def run_then_defer(module: ModuleType) -> None:
            run(module)
            module.TelegramMethod.model_config["defer_build"] = True

        spec.loader.exec_module = run_then_defer  # type: ignore[method-assign]
        return spec


def import_aiogram() -> None:
    """Import aiogram with its types and methods deferred (nothing to do once aiogram is imported)."""
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
    sys.meta_path.insert(0, _MethodsDeclaredDeferred)
    try:
        import aiogram  # noqa: F401
    finally:
        sys.meta_path.remove(_MethodsDeclaredDeferred)
        BaseModel.model_rebuild = rebuild  # type: ignore[method-assign]
