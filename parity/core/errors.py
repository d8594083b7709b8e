"""The usage error: bad input the user can fix. The CLI prints its message on one line and exits 2.

Three kinds of failure reach the command line, each with its own exit code (pytest's convention for the third):

- a parity failure (a verdict): exit 1, never raised as an exception;
- a :class:`UsageError` (an argument, a file, or a user function that raised: :class:`UserCodeError`): one
  line naming what was expected, what was received and what to do, exit 2;
- anything else is a bug in parity itself: exit 3, a one-line summary and the traceback written to a file.
"""
from __future__ import annotations

import functools
from typing import Any, Callable


class UsageError(ValueError):
    """Bad input from the user (an argument, a file, a user function that failed): one line, exit 2."""


class UserCodeError(UsageError):
    """A function the user handed to parity (a model builder, a port's forward) raised. The message names the
    function, the exception and how to see the traceback; ``__cause__`` keeps the original exception."""

    def __init__(self, what: str, exc: BaseException):
        self.what = what
        self.original = exc
        text = str(exc).strip().splitlines()
        detail = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
        super().__init__(f"{what} raised {detail}. Expected it to run without error: fix that function "
                         "(set PARITY_DEBUG=1 for the traceback).")


def function_name(fn: Any) -> str:
    """``module:qualname`` of a callable (what a user would pass on the command line), else its repr."""
    mod = getattr(fn, "__module__", None)
    qual = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if mod and qual:
        return f"{mod}:{qual}"
    return repr(fn)


def call_user(fn: Callable, what: str, *args, **kwargs):
    """Call a user's function; any exception it raises becomes a :class:`UserCodeError` naming ``what``
    (e.g. ``"--port mypkg.port:build"``). Usage errors pass through unchanged; a ``sys.exit()`` in the user's
    function is reported like an exception (it would otherwise end parity with the function's exit code);
    ``KeyboardInterrupt`` is not caught."""
    try:
        return fn(*args, **kwargs)
    except UsageError:
        raise
    except (Exception, SystemExit) as exc:
        raise UserCodeError(what, exc) from exc


def user_function(fn: Callable, what: str | None = None) -> Callable:
    """``fn`` wrapped by :func:`call_user` (same name, module and signature: ``functools.wraps``)."""
    if getattr(fn, "__parity_user_function__", False):
        return fn
    label = what or function_name(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return call_user(fn, label, *args, **kwargs)

    wrapper.__parity_user_function__ = True
    wrapper.__parity_label__ = label
    return wrapper


def label_of(fn) -> str:
    """How the user named ``fn`` (``--port mypkg.port:build``), else its ``module:qualname``."""
    return getattr(fn, "__parity_label__", None) or function_name(fn)
