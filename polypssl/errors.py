"""One exception type for every problem a user can fix (bad path, bad key, bad checkpoint).

The CLI prints these as a single line without a traceback; anything else is a bug and keeps
its traceback.
"""


class PolypsslError(Exception):
    """A problem in the user's input, with a message that names the culprit and the fix."""
