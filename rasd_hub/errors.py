"""Exception types shared by the whole project.

Every error a user can cause derives from :class:`RasdError`; its message says what was wrong and
what to do next. The ``rasd`` command prints these without a traceback and exits with status 2.
Packages built on ``rasd_hub`` (``pretraining``, ``nnunet_plugin``) derive their own errors from it.
"""


class RasdError(Exception):
    """Base class of the project's user-facing errors."""


class RasdValueError(RasdError, ValueError):
    """A bad argument or configuration value."""
