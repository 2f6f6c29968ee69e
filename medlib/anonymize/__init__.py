"""medlib.anonymize: DICOM de-identification at the site, by the PS3.15 confidentiality profile.

It owns the profile table (``profile.json``, generated from the standard) and medlib's rules
for what the table does not list (``free_text.json``), the site key and its keyed pseudonyms,
the anonymizer that interprets them, the residual scan for the input's identifying values
(``identifiers.json``), burned-in text found by OCR, whole-tree runs with their report, and the
check of outputs for residual identifiers. It never modifies an original and never writes the
key anywhere.
"""

from .anonymizer import Anonymizer
from .keys import KeyFileError, SiteKey
from .profile import Action, OptionError, Profile, load_profile

__all__ = ["Action", "Anonymizer", "KeyFileError", "OptionError", "Profile", "SiteKey", "load_profile"]
