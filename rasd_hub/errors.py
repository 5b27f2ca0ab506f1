"""Exception types shared by the whole project.

Every error a user can cause derives from :class:`RasdError`; its message says what was wrong and
what to do next. The ``rasd`` command prints these without a traceback and exits with status 2.
Packages built on ``rasd_hub`` (``pretraining``, ``nnunet_plugin``) derive their own errors from it.
"""


class RasdError(Exception):
    """Base class of the project's user-facing errors."""


class RasdValueError(RasdError, ValueError):
    """A bad argument or configuration value."""


class UnknownModelError(RasdValueError):
    """A model name that is neither a registered architecture, an ``arch.tag`` nor a weights source."""


class WeightsNotAvailableError(RasdError):
    """No weights exist (yet) for the requested name; the message says how to obtain them."""


class WeightsFormatError(RasdValueError):
    """A weights directory, Hub repo or checkpoint is not in the expected layout."""


class WeightsNotFoundError(WeightsFormatError):
    """A weights folder or file path that does not exist (a typo, or not exported yet)."""


class StateDictMismatchError(RasdError):
    """A strict load found missing, unexpected or reshaped keys (all listed in one message).

    ``report`` holds the :class:`rasd_hub.weights.LoadReport` that describes the mismatch.
    """

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


class ChecksumMismatchError(RasdError):
    """A file's sha256 differs from the pinned or advertised value, even after one re-download."""

    def __init__(self, message: str, *, filename: str = "", expected: str = "", actual: str = ""):
        super().__init__(message)
        self.filename = filename
        self.expected = expected
        self.actual = actual


class HubError(RasdError):
    """Talking to the Hugging Face Hub (or a mirror) failed: not found, server error, bad reply."""


class OfflineError(HubError):
    """Offline mode is on (``HF_HUB_OFFLINE=1`` or ``offline=True``) and the file is not cached."""


class ConfigValidationError(WeightsFormatError):
    """A ``config.json`` (or model arguments) that does not fit the architecture's typed arguments;
    ``field`` names the offending entry (``model_args.channels``)."""

    def __init__(self, message: str, *, field: str = ""):
        super().__init__(message)
        self.field = field
