"""The front door: a curated, sorted, complete public API that loads no driver."""

from __future__ import annotations

import inspect
import subprocess
import sys

import aioabort


def test_all_is_sorted_and_complete() -> None:
    assert aioabort.__all__ == sorted(aioabort.__all__)
    public = {
        name
        for name, obj in vars(aioabort).items()
        if not name.startswith("_") and not inspect.ismodule(obj)
    }
    assert public == set(aioabort.__all__)


def test_public_names_report_the_package_as_their_module() -> None:
    for name in aioabort.__all__:
        obj = getattr(aioabort, name)
        assert obj.__module__ == "aioabort", name


def test_every_error_shares_one_root() -> None:
    errors = [getattr(aioabort, n) for n in aioabort.__all__]
    errors = [e for e in errors if isinstance(e, type) and issubclass(e, BaseException)]
    assert len(errors) > 15
    assert all(issubclass(e, aioabort.AioabortError) for e in errors)


def test_import_loads_no_driver_or_web_framework() -> None:
    code = (
        "import sys, aioabort; "
        "print(sorted(m for m in ('asyncpg', 'aiosqlite', 'starlette', 'fastapi', 'aiohttp', 'httpx') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_task_aborted_pickles_with_its_reason() -> None:
    import pickle

    exc = aioabort.TaskAborted("t", aioabort.AbortReason("user", "m", "me"))
    copy = pickle.loads(pickle.dumps(exc))
    assert (copy.task_id, copy.reason) == ("t", exc.reason)
    assert str(copy) == str(exc)


def test_core_modules_import_no_sql_or_driver() -> None:
    """Layering: nothing in the core imports a driver or the backends."""
    import pathlib

    root = pathlib.Path(aioabort.__file__).parent
    for path in root.glob("_*.py"):
        text = path.read_text()
        for banned in ("import aiosqlite", "import asyncpg", "import sqlite3", "from .backends"):
            if path.name in ("_app.py", "_lifecycle.py") and banned == "from .backends":
                continue  # the App (its life cycle) loads a store by URL: the one layer allowed to
            assert banned not in text, f"{path.name} must not contain {banned!r}"


def test_the_asgi_middleware_needs_no_web_framework() -> None:
    """Litestar, Django and raw ASGI users import the middleware without Starlette."""
    code = (
        "import sys\n"
        "for name in ('starlette', 'fastapi'):\n"
        "    sys.modules[name] = None  # as if not installed\n"
        "from aioabort.web import AbortMiddleware, combine_lifespans\n"
        "import aioabort\n"
        "try:\n"
        "    from aioabort.web import router\n"
        "except aioabort.MissingDriver as exc:\n"
        "    print('router:', exc)\n"
        "print(sorted(m for m in ('starlette', 'fastapi') if sys.modules.get(m)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 'pip install "aioabort[web]"' in out.stdout
    assert out.stdout.strip().endswith("[]")


def test_names_never_released_are_gone() -> None:
    """``TaskError`` and ``App.registered_tasks`` were renamed before any release: no shims."""
    assert not hasattr(aioabort, "TaskError")
    assert not hasattr(aioabort.App("sqlite:///unused.db"), "registered_tasks")


def test_the_core_never_imports_the_sync_app_or_the_celery_bridge() -> None:
    """They sit on top of the core: the core imports neither, and `import aioabort` loads no
    Celery."""
    import pathlib

    root = pathlib.Path(aioabort.__file__).parent
    for path in [*root.glob("_*.py"), *root.glob("backends/**/*.py"), *root.glob("web/*.py")]:
        text = path.read_text()
        for banned in (
            "from .sync",
            "from .celery",
            "import celery",
            "from celery",
            "import aioabort.",
        ):
            assert banned not in text, f"{path.relative_to(root)} must not contain {banned!r}"
    code = "import sys, aioabort, aioabort.sync; print('celery' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
