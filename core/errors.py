"""Errors the input layer and the commands raise for bad input.

Each message names the file and the problem, so the command line can print it as it is instead of a
traceback from inside a library.
"""


class CTInputError(ValueError):
    """An input file or folder cannot be used as asked (unreadable, wrong grid, not CT in HU, ...)."""
