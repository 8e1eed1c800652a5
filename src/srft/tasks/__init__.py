"""Built-in reasoning tasks and the task loader.

``get_task(spec, **kwargs)`` accepts

* a built-in name (see ``TASKS``), e.g. ``"addition"``;
* ``"package.module:ClassName"``, imported from the Python path;
* ``"path/to/file.py:ClassName"``, loaded from that file.

The named object is called with ``**kwargs`` when it is a class (or any other
callable); an already-built instance is returned as is (``kwargs`` must then
be empty). Problems raise :class:`TaskError` (a ``ValueError``) with a message
saying what went wrong.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path

from srft.scoring import Score
from srft.tasks.addition import AdditionTask
from srft.tasks.base import SPLITS, Task
from srft.tasks.carry import CarryChainTask, TaughtCarryTask
from srft.tasks.expression import ExpressionTask
from srft.tasks.files import FileTask

TASKS: dict[str, type] = {
    AdditionTask.name: AdditionTask,
    ExpressionTask.name: ExpressionTask,
    CarryChainTask.name: CarryChainTask,
    TaughtCarryTask.name: TaughtCarryTask,
}
DEFAULT_TASK = "addition"

__all__ = ["TASKS", "DEFAULT_TASK", "base_model_task", "SPLITS", "Score", "Task", "TaskError", "get_task", "make_task",
           "AdditionTask", "CarryChainTask", "ExpressionTask", "FileTask", "TaughtCarryTask"]


class TaskError(ValueError):
    """A task spec that cannot be resolved into a usable task."""


def base_model_task(task: str, base_task: str | None = None) -> str:
    """The task whose built-in base model serves ``task`` when ``model.path`` is null.

    ``base_task`` (``model.base_task``) names it outright. Otherwise built-in tasks and plugins
    (``module:Class``, ``file.py:Class``) have their own, pre-trained on their text; a task with
    no text of its own to pre-train on (``file``: data files) uses the default task's
    (``DEFAULT_TASK``).
    """
    if base_task is not None:
        return base_task
    if task in TASKS:  # a built-in task may share another's base model (TaughtCarryTask)
        return getattr(TASKS[task], "base_task", task)
    return task if ":" in task else DEFAULT_TASK


def get_task(spec: str, **kwargs) -> Task:
    """Resolve ``spec`` (built-in name, ``module:Class`` or ``file.py:Class``) into a task."""
    if not isinstance(spec, str) or not spec.strip():
        raise TaskError(f"task spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    if spec in TASKS:
        obj, where = TASKS[spec], f"built-in task {spec!r}"
    elif ":" in spec:
        target, _, attr = spec.rpartition(":")
        if not target or not attr:
            raise TaskError(f"task spec {spec!r} must look like 'module:Class' or 'path/to/file.py:Class'")
        module = _load_module(target, spec)
        if not hasattr(module, attr):
            names = sorted(n for n in vars(module) if not n.startswith("_"))
            raise TaskError(f"task plugin {target!r} has no attribute {attr!r} (it defines: {', '.join(names) or 'nothing'})")
        obj, where = getattr(module, attr), f"task plugin {spec!r}"
    else:
        raise TaskError(
            f"unknown task {spec!r}; built-in tasks: {', '.join(sorted(TASKS))} "
            f"(or give 'module:Class' or 'path/to/file.py:Class')"
        )
    if inspect.isclass(obj) or (callable(obj) and not _looks_like_task(obj)):
        try:
            task = obj(**kwargs)
        except Exception as e:  # a broken plugin constructor: say whose it is
            raise TaskError(f"could not construct {where}: {type(e).__name__}: {e}") from e
    else:
        if kwargs:
            raise TaskError(f"{where} is an instance, it cannot take arguments {sorted(kwargs)}")
        task = obj
    missing = [m for m in ("generate", "verify") if not callable(getattr(task, m, None))]
    if missing:
        raise TaskError(f"{where} is not a task: missing method(s) {', '.join(missing)} "
                        f"(a task needs generate(split, n, seed) and verify(completion, answer))")
    if not getattr(task, "name", None):
        try:
            task.name = spec.rpartition(":")[2] or spec
        except Exception:
            pass
    return task


def make_task(cfg, need_train: bool = True):
    """The task of a config's ``data.task``: built-in, plugin, or data files (``file``).

    Reads ``cfg.data`` only, so anything with a ``data`` section will do. ``need_train=False``
    (evaluation) lets ``data.task=file`` go without ``data.train_file`` when a test file is given.
    """
    d = cfg.data
    if d.task == "file":
        if need_train and d.train_file is None:
            from srft.data.loading import DataError

            raise DataError("data.task=file needs data.train_file (a .parquet, .jsonl or .json file)")
        return FileTask(d.train_file, {"test_id": d.test_id_file, "test_ood": d.test_ood_file}, d.reward,
                        d.verifier_workers, d.verifier_timeout, d.verifier_think_answers)
    return get_task(d.task)


def _looks_like_task(obj) -> bool:
    return callable(getattr(obj, "generate", None)) and callable(getattr(obj, "verify", None))


def _load_module(target: str, spec: str):
    is_file = target.endswith(".py") or "/" in target or "\\" in target
    if is_file:
        path = Path(target).expanduser()
        if not path.is_file():
            raise TaskError(f"task plugin file not found: {str(path)!r} (from spec {spec!r})")
        mod_name = f"srft_task_plugin_{abs(hash(str(path.resolve())))}"
        try:
            mspec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(mspec)
            sys.modules[mod_name] = module
            mspec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(mod_name, None)
            raise TaskError(f"task plugin file {str(path)!r} failed to import: {type(e).__name__}: {e}") from e
        return module
    try:
        return importlib.import_module(target)
    except Exception as e:
        raise TaskError(f"task plugin module {target!r} failed to import: {type(e).__name__}: {e}") from e
