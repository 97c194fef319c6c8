"""The one error type of dataset input, shared by every reader of ``data/``."""

__all__ = ["DatasetError"]


class DatasetError(ValueError):
    """Bad or unreadable dataset input; the message names the file and the problem."""
