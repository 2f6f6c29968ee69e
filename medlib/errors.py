"""Exceptions of medlib. Messages say what was wrong and what to do."""


class MedlibError(Exception):
    """Base of every medlib error."""


class NotInMedhubServer(MedlibError):
    """The code runs outside a server spawned by medhub (no identity in the environment)."""
