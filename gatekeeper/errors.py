"""Errors that are the user's to fix: shown as a message and exit code 2, never a traceback."""


class UserError(Exception):
    """A mistake the user can fix (bad file, bad flag); the message says what and how."""
