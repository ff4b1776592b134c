"""The one exception the runtime raises for bad input (checkpoints, configs, text files)."""


class ModelError(Exception):
    """Bad model input; the message names the file or tensor and what to do about it."""
