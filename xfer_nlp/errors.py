"""Every exception the package raises on purpose: each message names the problem and the fix."""


class XferError(ValueError):
    """A user-facing problem; the CLI prints its message without a traceback."""


class ConfigError(XferError):
    """A bad option, option value or config file."""


class DataError(XferError):
    """A dataset that cannot be read or is not a labelled text set."""


class Interrupted(XferError):
    """The user stopped the run (Ctrl-C); the message says where and how to resume."""


class CheckpointError(XferError):
    """A checkpoint that cannot be resumed from."""


class TrainingDiverged(XferError):
    """The loss became NaN or infinite."""


class PushError(XferError):
    """Uploading to the Hub failed; the local outputs are intact."""
