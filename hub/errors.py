"""Exceptions of the hub side. Messages name the setting or file to fix."""


class HubConfigError(Exception):
    """The settings file (or a file it names) is wrong; the message names the setting."""


class IdentityProviderUnavailable(Exception):
    """The OpenID Connect issuer could not be reached."""


class ProcessStartError(Exception):
    """A process medhub supervises (IdP, proxy, hub) did not come up."""
