"""User-facing errors.

A :class:`UnsoloError` is a problem with the user's input (a missing file, malformed JSON, an
impossible option). The CLI prints its message on one line and exits with status 2, without a
traceback; programming errors keep their traceback.
"""


class UnsoloError(Exception):
    """An error caused by the user's input; its message is shown as is, on one line."""
