"""The one exception type that reaches a user as a single error line."""


class DaqSearchError(Exception):
    """Bad input a user can fix: the message names the field (or file) and what is allowed.

    The CLI prints it as one line, ``daq-search: error: <message>``, and exits with status 2.
    """
