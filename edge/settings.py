"""The edge's settings file (TOML), typed and checked like the hub's.

Example::

    site = "site-a"
    hub_url = "https://medhub.example.org"
    token_file = "/etc/medhub-edge/token"          # `medhub site-token site-a` on the hub
    key_file = "/etc/medhub-edge/site.key"         # `medlib anonymize keygen`; never leaves the site
    state_dir = "/var/lib/medhub-edge"             # inbox, journal, mapping store, quarantine

    [pacs]
    aet = "PACS"
    host = "pacs.hospital.local"
    port = 104
    dicomweb_url = "http://pacs.hospital.local/dicom-web"

    [scp]
    aet = "MEDHUB_EDGE"
    port = 11112
    allowed_callers = ["PACS", "CT_SCANNER_1"]

    [rules]                                         # what this site refuses, whatever is asked
    policies = ["anonymized", "features"]
    modalities = ["CT", "MR", "PT", "SEG", "RTSTRUCT"]
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from medlib.anonymize.ocr import OcrSettings
from medlib.anonymize.pixels import load_rules
from medlib.anonymize.tree import PixelPolicy
from medlib.contract import SLUG, Policy

from .errors import EdgeError


class Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def _ae(value: str) -> str:
    if not 0 < len(value) <= 16 or not value.isascii() or "\\" in value:
        raise ValueError(f"{value!r} is not a DICOM AE title (1-16 ASCII characters, no backslash)")
    return value


AETitle = Annotated[str, AfterValidator(_ae)]


def _site(value: str) -> str:
    if not SLUG.match(value):
        raise ValueError(f"{value!r} is not a site id (lower-case letters, digits and '-')")
    return value


class PacsSettings(Table):
    """``[pacs]``: the hospital's PACS, asked for harvests from ``source = "pacs"`` or ``"dicomweb"``."""

    aet: AETitle = "PACS"
    """The PACS's AE title (called)."""
    host: str = "127.0.0.1"
    """Its address in the hospital's network."""
    port: int = 104
    """Its DICOM port."""
    retrieve: Literal["move", "get"] = "move"
    """C-MOVE (the PACS sends to this edge's SCP: it must know the edge's AE title, host and port)
    or C-GET (on the same association: no configuration at the PACS)."""
    dicomweb_url: str = ""
    """Its DICOMweb root (QIDO-RS, WADO-RS); empty: none."""
    timeout: float = 60
    """Seconds to wait for an answer on an association."""
    retries: int = 5
    """Attempts at reaching it, with doubling waits, before a harvest reports it unreachable (and
    tries again at the next poll)."""


class ScpSettings(Table):
    """``[scp]``: the edge's C-STORE SCP: the destination of C-MOVEs and of pushes."""

    aet: AETitle = "MEDHUB_EDGE"
    """The edge's AE title."""
    bind: str = "0.0.0.0"
    """Where it listens (in the hospital's network)."""
    port: int = 11112
    """Its DICOM port."""
    allowed_callers: tuple[str, ...] = ()
    """AE titles that may push to it (besides the PACS's); others are rejected."""


class RulesSettings(Table):
    """``[rules]``: the site's own limits: a request outside them is refused, with the reason."""

    policies: tuple[Policy, ...] = (Policy.ANONYMIZED, Policy.FEATURES)
    """Policies this site accepts (`identifiable` only if the site agreed to send identifiable data)."""
    modalities: tuple[str, ...] = ("CT", "MR", "PT", "SEG", "RTSTRUCT")
    """Modalities that may be harvested; instances of others are not delivered."""
    earliest: str = ""
    """The earliest study date that may be harvested (YYYYMMDD); empty: any."""
    latest: str = ""
    """The latest study date that may be harvested (YYYYMMDD); empty: any."""


class QcSettings(Table):
    """``[qc]``: the checks of each series before delivery (:mod:`medhub_edge.qc`)."""

    spacing_tolerance: float = 0.05
    """Largest relative deviation of a gap between slices from the series' median."""
    decode_pixels: bool = True
    """Check every instance's pixel data: native data must hold the bytes its attributes say,
    compressed data must decode (catches truncated files and unsupported compression)."""


class PixelsSettings(Table):
    """``[pixels]``: files that may carry burned-in text (ultrasound, angiography, screen
    captures), under the anonymized policy: cleaned and sent on, or left in the site's quarantine."""

    ocr: bool = True
    """Find burned-in text with OCR (Tesseract) and blank it; off: only `rules_file` cleans."""
    ocr_min_confidence: float = OcrSettings().min_confidence
    """Text still read at this OCR confidence (0-100) after cleaning keeps a file in quarantine."""
    rules_file: Path | None = None
    """The site's rectangle rules per device (TOML, see medlib/anonymize/pixels.py), applied before OCR."""

    @property
    def policy(self) -> PixelPolicy:
        """What :func:`medlib.anonymize.tree.anonymize_file` does with these files.

        Raises:
            PixelRuleError: the rules file is missing or malformed (the message says where)."""
        rules = load_rules(self.rules_file) if self.rules_file else ()
        return PixelPolicy(rules, OcrSettings(min_confidence=self.ocr_min_confidence) if self.ocr else None)


class WebSettings(Table):
    """``[web]``: the upload page, where a person at the hospital drops a folder or a zip."""

    enabled: bool = True
    """Serve it."""
    bind: str = "127.0.0.1"
    """Where it listens (the hospital's network; put TLS in front of it)."""
    port: int = 8470
    """Its port."""
    max_upload_mb: int = 4096
    """The largest upload accepted."""


class EdgeSettings(Table):
    """The whole file; relative paths are the file's."""

    site: Annotated[str, AfterValidator(_site)]
    """The site's id, as the hub's `[[site]] name`."""
    hub_url: str
    """The hub's public address (HTTPS); the edge only ever calls out to it."""
    token_file: Path
    """The site's hub token (`medhub site-token <site>` on the hub), mode 0600."""
    key_file: Path
    """The site key (`medlib anonymize keygen`); it never leaves the site."""
    state_dir: Path
    """Inbox, journal, mapping store, quarantine, web users: the edge's own, never sent."""
    poll_seconds: float = 10
    """How often the hub is asked for requests."""
    quiet_seconds: float = 30
    """A study is delivered only after it received nothing for this long (it may still be arriving)."""
    chunk_mb: float = 8
    """Upload chunk size."""
    anonymize_options: tuple[str, ...] = ()
    """PS3.15 options for the anonymized policy (e.g. `retain_modified_dates`)."""
    anonymize_keep_text: Path | None = None
    """The site's additions to the free-text attributes kept, reviewed (JSON `keep` rows, as `medlib anonymize run --keep-text`)."""
    pacs: PacsSettings = PacsSettings()
    scp: ScpSettings = ScpSettings()
    rules: RulesSettings = RulesSettings()
    qc: QcSettings = QcSettings()
    pixels: PixelsSettings = PixelsSettings()
    web: WebSettings = WebSettings()

    @property
    def token(self) -> str:
        try:
            return self.token_file.read_text().strip()
        except OSError as e:
            raise EdgeError(f"cannot read the site's token {self.token_file}: {e.strerror}; an administrator of the "
                            f"hub gets it with `medhub site-token {self.site}`") from None


def load(path: str | os.PathLike[str]) -> EdgeSettings:
    """Read and check the edge's settings file.

    Raises:
        EdgeError: naming the file and every wrong key.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise EdgeError(f"cannot read the edge's settings {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise EdgeError(f"{path} is not TOML: {e}") from None
    for table, key in ((data, "token_file"), (data, "key_file"), (data, "state_dir"), (data, "anonymize_keep_text"),
                       (data.get("pixels") or {}, "rules_file")):
        if isinstance(table.get(key), str) and not Path(table[key]).is_absolute():
            table[key] = str(path.parent / table[key])
    try:
        return EdgeSettings.model_validate(data)
    except ValidationError as e:
        lines = [f"{path}: {'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in e.errors()]
        raise EdgeError("\n".join(lines)) from None


__all__ = ["EdgeSettings", "load"]
