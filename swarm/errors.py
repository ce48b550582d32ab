"""The error every layer raises for bad input or a failed operation: the CLI prints it as one line."""


class SwarmError(Exception):
    """A failure the user can act on; its message is a complete sentence, shown without a traceback."""
