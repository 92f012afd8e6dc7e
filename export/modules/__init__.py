"""Export-module registry: one module per task, found by the task's name.

A task defined elsewhere registers its module with
`@register_export_module("task name")`.
"""

from __future__ import annotations

import importlib

from export.modules.base import ExportModule

_MODULES: dict[str, type[ExportModule]] = {}
_BUILTIN = {"text_classification": "export.modules.text_classification",
            "translation": "export.modules.translation",
            "language_modeling": "export.modules.language_modeling",
            "image_classification": "export.modules.image_classification"}


def register_export_module(task_name: str):
    """Class decorator: registers an ExportModule subclass for `task_name`."""
    def register(cls: type[ExportModule]) -> type[ExportModule]:
        if not (isinstance(cls, type) and issubclass(cls, ExportModule)):
            raise TypeError(f"register_export_module({task_name!r}): {cls!r} is not an "
                            "ExportModule subclass")
        _MODULES[task_name] = cls
        return cls
    return register


def get_export_module_class(task_name: str) -> type[ExportModule]:
    if task_name not in _MODULES and task_name in _BUILTIN:
        importlib.import_module(_BUILTIN[task_name])
    if task_name not in _MODULES:
        known = ", ".join(sorted(set(_MODULES) | set(_BUILTIN)))
        raise KeyError(f"task {task_name!r} has no export module (tasks with one: "
                       f"{known})")
    return _MODULES[task_name]


def make_export_module(task, model) -> ExportModule:
    return get_export_module_class(task.name)(task, model)


__all__ = ["ExportModule", "get_export_module_class", "make_export_module",
           "register_export_module"]
