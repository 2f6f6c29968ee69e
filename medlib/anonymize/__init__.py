"""medlib.anonymize: DICOM de-identification at the site, by the PS3.15 confidentiality profile.

It owns the profile table (``profile.json``, generated from the standard), the site key and
its keyed pseudonyms, the anonymizer that interprets the table, whole-tree runs with their
report, and the check of outputs for residual identifiers. It never modifies an original
and never writes the key anywhere.
"""

from .anonymizer import Anonymizer
from .keys import KeyFileError, SiteKey
from .profile import Action, OptionError, Profile, load_profile

__all__ = ["Action", "Anonymizer", "KeyFileError", "OptionError", "Profile", "SiteKey", "load_profile"]
