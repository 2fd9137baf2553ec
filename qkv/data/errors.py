class DataError(RuntimeError):
    """A data set cannot be found, fetched or read; the message says what to do."""
