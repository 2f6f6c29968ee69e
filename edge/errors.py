"""The edge's errors: each message says what to do."""

from medlib.errors import MedlibError


class EdgeError(MedlibError):
    """The edge cannot do what was asked; the message says why and what to change."""


class PacsUnreachable(EdgeError):
    """The PACS did not answer or refused the association, after the configured retries."""
