"""The error raised when an image or mask file cannot be read or holds bad values."""


class DataError(ValueError):
    """An image or mask file is missing, unreadable or holds bad values; the message names it.

    Dataset-specific errors (`kseg.data.VOCDataError`) are subclasses, so
    `except kseg.data.DataError` catches them all.
    """
