"""The one exception type users see: its message says what was wrong and what to do."""


class DiTError(Exception):
    """Bad input or an unmet requirement; the CLIs print it as one line and exit non-zero."""
