"""The error medlib.qa raises for input it cannot use: the message says what to do."""

from ..errors import MedlibError


class QaError(MedlibError, ValueError):
    """A model, dataset or profile that does not fit the evaluation asked for."""
