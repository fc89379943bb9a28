"""The one error type for what the user must fix.

The CLI turns a `UserError` into its message and exit code 2, with no traceback.
Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad recipe, missing model, bad data row: something the user fixes, not a bug."""

    exit_code = 2
