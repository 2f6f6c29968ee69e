"""The dataset catalog: which datasets exist, what they are, and which groups may read them.

One TOML file (``[hub] catalog`` in the settings) holds one ``[[dataset]]`` table per
dataset; it is read and checked completely when the hub starts, and a bad entry stops the
hub with a message naming the file, the entry and the key. Each entry is also a schema.org
``Dataset`` (:meth:`Dataset.jsonld`), so that the catalog can be published FAIRly: findable by
its identifier, with its licence and provenance.

Example::

    [[dataset]]
    id = "lung-ct-2024"
    title = "Lung CT, 2024 screening cohort"
    description = "Low-dose chest CT, one series per participant."
    location = "/data/lung-ct-2024"       # a local folder, or an fsspec URL of open data (open_access)
    modality = "CT"
    licence = "CC-BY-4.0"
    identifier = "https://doi.org/10.5281/zenodo.0000000"
    provenance = "Harvested from PACS of site A; de-identified there with medlib (Basic Profile)."
    contact = "data-steward@hospital.example"
    sensitivity = "anonymized"            # identifiable | pseudonymized | anonymized
    groups = ["radiology-research"]
    # manifest = "MANIFEST.sha256"        # checksums at the location: `medhub catalog manifest FOLDER`
    owners = ["radiology-stewards"]       # its data owners: grant, refuse and revoke access, steer harvests
    # max_grant_days = 365                 # the longest a personal grant of it may run (medhub access)
    # versioned = true                     # the location holds versions delivered by sites' edges

A ``versioned`` dataset grows by deliveries from the hospitals' edge nodes (:mod:`medhub.ingest`):
its location holds immutable versions (``v000001``, ...) and ``current``, the newest
(:mod:`medlib.versions`), each with its own manifest; it may start empty.

Every dataset names its **owners**: the groups whose members decide who else may read it
(:mod:`medhub.access`: requests with a purpose and an expiry, approved or refused by an owner)
and steer harvests into it. The ``groups`` of an entry are standing grants to whole groups; a
personal grant lives in the access service's database, never in this file.

An ``identifiable`` dataset is granted only to groups that its entry also lists in
``identifiable_groups``: naming a group once is never enough to hand it identifiable data.

A dataset at a URL is catalogued only as open data (``open_access = true``, anonymized): the hub
has no way to give a server a credential that reads only the datasets granted to its user, so it
never relies on one; data that needs a credential is catalogued as a local folder instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medlib.contract import SLUG

from .errors import HubConfigError
from .tomlfile import Section, read_toml

SENSITIVITIES = ("identifiable", "pseudonymized", "anonymized")
URL = re.compile(r"^[a-z][a-z0-9+.-]*://")
MANIFEST = "MANIFEST.sha256"


@dataclass(frozen=True)
class Dataset:
    """One catalog entry."""

    id: str
    title: str
    location: str  # an absolute local path, or an fsspec URL
    groups: tuple[str, ...]
    sensitivity: str
    licence: str
    description: str = ""
    modality: str = ""
    identifier: str = ""
    provenance: str = ""
    contact: str = ""
    identifiable_groups: tuple[str, ...] = ()
    manifest: str = MANIFEST
    open_access: bool = False  # a URL anyone may read without a credential (anonymized open data)
    owners: tuple[str, ...] = ()  # groups whose members decide who may read it, and steer harvests into it
    versioned: bool = False  # versions delivered by sites (medlib.versions), not one fixed folder
    max_grant_days: int = 365  # the longest a personal grant of it may run

    def owned_by(self, groups: Iterable[str]) -> bool:
        """Whether a member of ``groups`` is one of this dataset's owners."""
        return bool(set(groups).intersection(self.owners))

    @property
    def is_local(self) -> bool:
        return not URL.match(self.location)

    @property
    def path(self) -> Path:
        """The local folder (only for local datasets)."""
        if not self.is_local:
            raise ValueError(f"dataset {self.id!r} lies at {self.location}, not in a local folder")
        return Path(self.location)

    def readers(self) -> tuple[str, ...]:
        """The groups granted this dataset (for identifiable data: only those cleared for it)."""
        if self.sensitivity == "identifiable":
            return tuple(g for g in self.groups if g in self.identifiable_groups)
        return self.groups

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form, as spawner traits and generated configs carry it."""
        d = asdict(self)
        d["groups"], d["identifiable_groups"] = list(self.groups), list(self.identifiable_groups)
        d["owners"] = list(self.owners)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Dataset:
        return cls(**{**d, "groups": tuple(d["groups"]), "identifiable_groups": tuple(d.get("identifiable_groups", ())),
                      "owners": tuple(d.get("owners", ()))})

    def jsonld(self) -> dict[str, Any]:
        """The entry as a schema.org ``Dataset`` (JSON-LD)."""
        doc: dict[str, Any] = {
            "@context": "https://schema.org/",
            "@type": "Dataset",
            "@id": self.identifier or f"urn:medhub:dataset:{self.id}",
            "identifier": self.identifier or self.id,
            "alternateName": self.id,
            "name": self.title,
            "description": self.description or self.title,
            "license": self.licence,
            "conditionsOfAccess": f"{self.sensitivity} data; readable by members of: {', '.join(self.readers())}",
            "additionalProperty": [{"@type": "PropertyValue", "name": "sensitivity", "value": self.sensitivity}],
        }
        if self.modality:
            doc["measurementTechnique"] = self.modality
        if self.provenance:
            doc["additionalProperty"].append({"@type": "PropertyValue", "name": "provenance", "value": self.provenance})
        if self.contact:
            doc["maintainer"] = {"@type": "Organization", "email": self.contact.removeprefix("mailto:")}
        if not self.is_local:
            doc["distribution"] = [{"@type": "DataDownload", "contentUrl": self.location,
                                    "encodingFormat": "application/dicom"}]
        return doc


def data_catalog(datasets: Iterable[Dataset], name: str = "medhub dataset catalog") -> dict[str, Any]:
    """The whole catalog as a schema.org ``DataCatalog`` (JSON-LD)."""
    return {"@context": "https://schema.org/", "@type": "DataCatalog", "name": name,
            "dataset": [{k: v for k, v in d.jsonld().items() if k != "@context"} for d in datasets]}


def granted(datasets: Iterable[Dataset], groups: Iterable[str]) -> list[Dataset]:
    """The datasets readable by a member of ``groups``, in catalog order."""
    member = set(groups)
    return [d for d in datasets if member.intersection(d.readers())]


def _entry(s: Section, known_groups: frozenset[str]) -> Dataset:
    d = Dataset(
        id=s.get("id", str),
        title=s.get("title", str),
        location=s.get("location", str),
        groups=s.strings("groups"),
        sensitivity=s.get("sensitivity", str),
        licence=s.get("licence", str),
        description=s.get("description", str, ""),
        modality=s.get("modality", str, ""),
        identifier=s.get("identifier", str, ""),
        provenance=s.get("provenance", str, ""),
        contact=s.get("contact", str, ""),
        identifiable_groups=s.strings("identifiable_groups"),
        manifest=s.get("manifest", str, MANIFEST),
        open_access=s.get("open_access", bool, False),
        owners=s.strings("owners"),
        versioned=s.get("versioned", bool, False),
        max_grant_days=s.get("max_grant_days", int, Dataset.max_grant_days),
    )
    s.done()
    if not SLUG.match(d.id):
        raise s.error("id", f"{d.id!r} is not a slug (lower-case letters, digits and '-', at most 63)")
    if d.sensitivity not in SENSITIVITIES:
        raise s.error("sensitivity", f"must be one of {', '.join(SENSITIVITIES)}, not {d.sensitivity!r}")
    if not d.groups:
        raise s.error("groups", "name the groups that may read this dataset")
    if not d.owners:
        raise s.error("owners", "name the groups whose members own this dataset: they grant, refuse and revoke "
                                "access to it (medhub access)")
    if d.max_grant_days < 1:
        raise s.error("max_grant_days", f"must be at least 1 day, not {d.max_grant_days}")
    unknown = sorted(set(d.groups + d.identifiable_groups + d.owners) - known_groups) if known_groups else []
    if unknown:
        raise s.error("groups", f"no such group: {', '.join(unknown)} (groups that can log in: "
                                f"{', '.join(sorted(known_groups))}; see oidc.allowed_groups)")
    if d.sensitivity == "identifiable":
        uncleared = [g for g in d.groups if g not in d.identifiable_groups]
        if uncleared:
            raise s.error("groups", f"this dataset is identifiable: list {', '.join(uncleared)} in "
                                    "identifiable_groups too to grant it (naming a group once is not enough)")
    elif d.identifiable_groups:
        raise s.error("identifiable_groups", f"only for identifiable datasets; this one is {d.sensitivity}")
    if "/" in d.manifest or d.manifest in ("", ".", ".."):
        raise s.error("manifest", f"must be a file name at the dataset's location, not {d.manifest!r}")
    if d.is_local:
        if not Path(d.location).is_absolute():
            raise s.error("location", f"{d.location!r} must be an absolute path (or an fsspec URL)")
        if not Path(d.location).is_dir():
            raise s.error("location", f"{d.location} is not a directory")
        if not d.versioned and not (Path(d.location) / d.manifest).is_file():
            raise s.error("manifest", f"{Path(d.location) / d.manifest} is missing; make it with "
                                      f"`medhub catalog manifest {d.location}`")
        if d.open_access:
            raise s.error("open_access", "is for datasets at a URL; a local folder is mounted read-only per grant")
    else:
        if d.versioned:
            raise s.error("versioned", "sites deliver versions into a local folder; give one as location")
        if not d.open_access:
            raise s.error("location", f"{d.location} would be read with whatever credential a server's environment "
                                      "holds, and the hub cannot issue one that reads only this dataset, for one "
                                      "user, for a short time. Catalogue the data as a local folder (mounted "
                                      "read-only per grant), or, if it is open data that needs no credential, set "
                                      "open_access = true")
        if d.sensitivity != "anonymized":
            raise s.error("open_access", f"open-access data must be anonymized, not {d.sensitivity}")
        _check_protocol(s, d.location)
    return d


def _check_protocol(s: Section, url: str) -> None:
    import fsspec

    protocol = url.split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(protocol)
    except (ValueError, ImportError) as e:
        raise s.error("location", f"cannot read {url}: {e}") from None


def load_catalog(path: Path, known_groups: Iterable[str] = ()) -> tuple[Dataset, ...]:
    """Read and check the catalog.

    Args:
        known_groups: the groups that can exist (those allowed to log in); a dataset naming
            another is an error. Empty: not checked.

    Raises:
        HubConfigError: naming the file, the entry and the key.
    """
    path = Path(path)
    data = read_toml(path, "dataset catalog")
    unknown = sorted(set(data) - {"dataset"})
    if unknown:
        raise HubConfigError(f"{path}: unknown table(s) {', '.join(unknown)}; each dataset is a [[dataset]] table")
    entries = data.get("dataset", [])
    if not isinstance(entries, list):
        raise HubConfigError(f"{path}: [[dataset]] must be an array of tables")
    datasets, seen = [], set()
    for i, item in enumerate(entries):
        name = f"dataset[{i}]" + (f" ({item['id']})" if isinstance(item, dict) and isinstance(item.get("id"), str) else "")
        d = _entry(Section(item, name, path), frozenset(known_groups))
        if d.id in seen:
            raise HubConfigError(f"{path}: {name}: id {d.id!r} is used twice")
        seen.add(d.id)
        datasets.append(d)
    return tuple(datasets)
