"""The one exception type for problems a user can fix: a bad setting, file, label or reference.

Entry points (``qualitune ...``, ``python -m qualitune.stages.*``) turn a :class:`QualituneError` into
its message and exit status 2, without a traceback: the message says what is wrong and what to do.
Every other exception is a bug (ours or a library's) and keeps its traceback, so it can be reported
and fixed rather than mistaken for bad input. It subclasses ``ValueError`` so that code and tests
written against the old contract (user errors were plain ``ValueError``) keep working.
"""

from __future__ import annotations


class QualituneError(ValueError):
    """A user-fixable error; its message names the input at fault and how to fix it."""


EXIT_USER_ERROR = 2  # the exit status of a QualituneError at an entry point (argparse uses 2 too)
