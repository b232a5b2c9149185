"""Every exception the package raises on purpose: each message names the problem and the fix."""


class XferError(ValueError):
    """A user-facing problem; the CLI prints its message without a traceback."""


class ConfigError(XferError):
    """A bad option, option value or config file."""


class LaunchError(ConfigError):
    """The launch itself (its Accelerate config) cannot run: every run of it would fail alike, so a compare grid
    stops at the first instead of failing each cell."""


class DataError(XferError):
    """A dataset that cannot be read or is not a labelled text set."""


class Interrupted(XferError):
    """The user (Ctrl-C) or the system (SIGTERM) stopped the run; the message says where and how to resume. `where`:
    the step and the last checkpoint alone, for a caller (compare) that words the resume its own way."""

    def __init__(self, message: str, where: str = ""):
        super().__init__(message)
        self.where = where


class CheckpointError(XferError):
    """A checkpoint that cannot be resumed from."""


class TrainingDiverged(XferError):
    """The loss became NaN or infinite."""


class OutOfMemory(XferError):
    """A training step or an evaluation needed more memory than the device had; the message names the settings
    that lower it and the checkpoint to go on from."""


class PushError(XferError):
    """Uploading to the Hub failed; the local outputs are intact."""


class DiskFull(XferError):
    """A write the disk could not hold (no space, a quota, a file-size limit); what it half-wrote is removed and what
    was written before it is intact. `why`: the problem alone, for a caller (compare) that words the way on."""

    def __init__(self, message: str, why: str = ""):
        super().__init__(message)
        self.why = why


def not_cached_offline(name: str, e: BaseException) -> str:
    """The way round, when a Hub id is in neither the Hugging Face cache nor reach (no network, or HF_HUB_OFFLINE:
    huggingface_hub's LocalEntryNotFoundError behind transformers' OSError), else "". transformers' own advice sits
    on the line after the one a message quotes."""
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    while e is not None and not isinstance(e, LocalEntryNotFoundError):
        e = e.__cause__ or e.__context__
    if e is None:
        return ""
    why = "this machine is offline: HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "no network"
    return (f" '{name}' is not a folder here, nor in the Hugging Face cache, and the Hub could not be reached ({why}): "
            f"download it once where the Hub is reachable (`hf download {name}`), or pass a folder saved with "
            "save_pretrained.")


def weights_cut_short(name: str, e: BaseException) -> ConfigError:
    """safetensors' SafetensorError on reading a model's weights: a copy or download cut short, whose header promises
    more than the file holds."""
    return ConfigError(f"The weights file of '{name}' is damaged ({e}): a copy or download cut short? Copy or download "
                       "the model again.")
