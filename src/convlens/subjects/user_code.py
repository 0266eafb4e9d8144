"""A user's own code as a model: ``path/to/file.py:build_fn`` or ``package.module:build_fn``.

**This runs the user's code**: the file is imported and ``build_fn()`` called with no arguments.
Whatever goes wrong in it (an exception, ``sys.exit``) becomes one :class:`InputError` naming where in
the user's file it happened; :mod:`convlens.subjects.open` turns the result into a subject.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import traceback
from pathlib import Path
from typing import Any

from convlens.errors import InputError, did_you_mean

_SPEC = re.compile(r"^(?P<target>.+\.py|[A-Za-z_][\w.]*):(?P<fn>[A-Za-z_]\w*)$")


def is_spec(spec: str) -> bool:
    """Whether `spec` names a build function (``file.py:fn`` or ``package.module:fn``)."""
    return _SPEC.match(spec) is not None


def build(spec: str) -> Any:
    """Import the code `spec` names and call its build function; what it returns, unchecked."""
    m = _SPEC.match(spec)
    if m is None:
        raise InputError(f"{spec!r} does not name a build function (file.py:build_fn)")
    target, fn_name = m.group("target"), m.group("fn")
    module = import_module(target)
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        found = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise InputError(f"{target} has no function {fn_name!r}.{did_you_mean(fn_name, found)}")
    try:
        return fn()
    except SystemExit as e:  # sys.exit() in a factory: a failure, not the end of convlens
        raise InputError(
            f"{spec} called sys.exit({e.code!r}) instead of returning a model"
        ) from None
    except Exception as e:  # the user's code: report where it failed, in one line
        raise InputError(f"{spec} raised {_where(e, target)}") from None


def name_the_function(path: Path) -> str:
    """The message for ``--model file.py`` without ``:function``: the functions it defines (read
    with `ast`, so none of its code runs)."""
    import ast

    try:
        tree = ast.parse(path.read_bytes())
        found = [
            n.name
            for n in tree.body
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and not n.name.startswith("_")
        ]
    except (SyntaxError, ValueError, OSError):
        found = []
    listed = f"; it defines {', '.join(found[:8])}" if found else ""
    example = found[0] if found else "build"
    return (
        f"{path} is Python code: name the function that builds the model, as "
        f"--model {path}:{example}{listed}"
    )


def import_module(target: str) -> Any:
    """Import `target` (a .py file or a dotted module): this runs the user's code."""
    if target.endswith(".py"):
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise InputError(f"no Python file at {target}")
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
        spec = importlib.util.spec_from_file_location(f"convlens_user_{digest}", path)
        if spec is None or spec.loader is None:
            raise InputError(f"{target} cannot be imported as Python")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except SystemExit as e:
            raise InputError(f"importing {target} called sys.exit({e.code!r})") from None
        except Exception as e:
            raise InputError(f"importing {target} raised {_where(e, str(path))}") from None
        return module
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as e:
        raise InputError(
            f"no Python module {target!r} ({e}); is it installed or on PYTHONPATH?"
        ) from None
    except SystemExit as e:
        raise InputError(f"importing {target} called sys.exit({e.code!r})") from None
    except Exception as e:
        raise InputError(f"importing {target} raised {_where(e, target)}") from None


def _where(e: BaseException, hint: str) -> str:
    """`ValueError: bad (my_net.py:12)`: the exception and the last frame in the user's file."""
    frames = traceback.extract_tb(e.__traceback__)
    name = Path(hint).name
    mine = [f for f in frames if Path(f.filename).name == name] or frames[-1:]
    at = f" ({Path(mine[-1].filename).name}:{mine[-1].lineno})" if mine else ""
    return f"{type(e).__name__}: {e}{at}"
