"""Task registry: `task:` in a config names one of these (default
`text_classification`); see `pipeline/tasks/base.py` for the interface.

Tasks are found through the registry, never by an `if` chain on a name. The
built-in ones register when this package is imported; a task defined
elsewhere (a user's module, a test) registers with `@register_task("name")`
before its config is loaded.
"""

from __future__ import annotations

import difflib
import importlib

from pipeline.tasks.base import Task

_TASKS: dict[str, type[Task]] = {}
# Built-in tasks: name -> module, imported on first use.
_BUILTIN = {"text_classification": "pipeline.tasks.text_classification",
            "masked_lm": "pipeline.tasks.masked_lm",
            "translation": "pipeline.tasks.translation",
            "language_modeling": "pipeline.tasks.language_modeling",
            "image_classification": "pipeline.tasks.image_classification"}

DEFAULT_TASK = "text_classification"


def register_task(name: str):
    """Class decorator: registers a Task subclass under `name`."""
    def register(cls: type[Task]) -> type[Task]:
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise TypeError(f"register_task({name!r}): {cls!r} is not a Task subclass")
        cls.name = name
        _TASKS[name] = cls
        return cls
    return register


def task_names() -> list[str]:
    return sorted(set(_TASKS) | set(_BUILTIN))


def get_task_class(name: str) -> type[Task]:
    """The Task class registered as `name`; KeyError with the known names."""
    if name not in _TASKS and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    if name not in _TASKS:
        close = difflib.get_close_matches(str(name), task_names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown task {name!r}{hint} (known: {', '.join(task_names())})")
    return _TASKS[name]


def make_task(cfg, log=print) -> Task:
    """The task of an experiment config (`cfg.task`)."""
    return get_task_class(cfg.task)(cfg, log=log)


__all__ = ["DEFAULT_TASK", "Task", "get_task_class", "make_task", "register_task",
           "task_names"]
