"""Scan anonymized files for anything the profile says must not survive with a real value.

The options a file was made with are read from its own DeidentificationMethodCodeSequence
(CID 7050 codes); a file without it (another tool's output) is held to the Basic Profile.
A finding is an attribute the profile removes that is present, one it empties or replaces
with a dummy that holds something else, a UID it replaces that is not a ``2.25.`` UID, or
a private attribute (under Retain Safe Private: one not in the safe list). Given the run's
mapping store, the residual scan (:mod:`.residual`) also looks for each file's original
identifying values in it. A file that cannot be read is a finding too, and the check goes on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from .anonymizer import DUMMY_BY_VR, PSEUDONYMS, Scope, inside, scope_of
from .mapping import MappingStore
from .profile import Action, Profile, SafePrivate, creator_tag, load_profile, safe_private_for
from .residual import Identifiers

PSEUDONYM_PREFIXES = tuple(template.split("{")[0] for _, template in PSEUDONYMS.values())


@dataclass(frozen=True)
class Finding:
    file: str
    tag: str
    keyword: str
    reason: str


def _values(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple, MultiValue)):
        return [str(v) for v in value if str(v)]
    return [str(value)] if str(value) else []


def options_of(ds: Dataset, profile: Profile) -> frozenset[str]:
    by_code = {code: name for name, (code, _) in profile.option_codes.items()}
    return frozenset(by_code[i.CodeValue] for i in ds.get("DeidentificationMethodCodeSequence", [])
                     if i.get("CodeValue") in by_code)


def check_dataset(ds: Dataset, name: str, profile: Profile | None = None,
                  safe_private: SafePrivate | None = None) -> list[Finding]:
    """Findings in one dataset (recursing into sequences). ``safe_private``: the site's
    additions to medlib's safe private attributes, for files made with Retain Safe Private."""
    profile = profile or load_profile()
    options = options_of(ds, profile)
    return list(_scan(ds, name, profile, options, safe_private_for(options, safe_private), scope_of(ds)))


def _scan(ds: Dataset, name: str, profile: Profile, options: frozenset[str], safe: SafePrivate,
          scope: Scope) -> Iterator[Finding]:
    for elem in ds:
        tag = f"({elem.tag.group:04X},{elem.tag.element:04X})"
        keyword = elem.keyword or "private" if elem.tag.is_private else elem.keyword or tag
        if elem.tag.is_private:
            creator = creator_tag(elem.tag)
            if safe.keeps(elem.tag, str(ds[creator].value) if creator in ds else None):
                if elem.VR == "SQ":
                    for item in elem.value:
                        yield from _scan(item, name, profile, options, safe, inside(scope, elem.tag))
            else:
                yield Finding(name, tag, keyword, "private attribute" + (" not in the safe list" * bool(safe.elements)))
            continue
        rule = profile.rule(elem.tag)
        action = None if rule is None else rule.action(options, profile.requirement(*scope, rule.keyword))
        if elem.VR == "SQ":
            if action is Action.REMOVE:
                yield Finding(name, tag, keyword, "must be removed")
            elif action is Action.ZERO and len(elem.value):
                yield Finding(name, tag, keyword, "must be empty")
            for item in elem.value:
                yield from _scan(item, name, profile, options, safe, inside(scope, elem.tag))
            continue
        values = _values(elem.value)
        if action is Action.REMOVE:
            yield Finding(name, tag, keyword, "must be removed")
        elif action in (Action.ZERO, Action.DUMMY) and elem.keyword in PSEUDONYMS:
            if any(not v.startswith(PSEUDONYM_PREFIXES) for v in values):
                yield Finding(name, tag, keyword, "holds a value that is not a pseudonym")
        elif action is Action.ZERO and values:
            yield Finding(name, tag, keyword, "must be empty")
        elif action is Action.DUMMY and elem.VR != "UI" and any(v != str(DUMMY_BY_VR.get(elem.VR)) for v in values):
            yield Finding(name, tag, keyword, "holds a value that is not a dummy")
        elif (action is Action.UID or (action is Action.DUMMY and elem.VR == "UI")) and any(
                not v.startswith("2.25.") for v in values):
            yield Finding(name, tag, keyword, "holds an original UID")
        elif action is Action.CLEAN and values and not (
                "retain_modified_dates" in options and elem.VR in ("DA", "DT", "TM")):
            yield Finding(name, tag, keyword, "must be cleaned")


def residual_findings(ds: Dataset, name: str, store: MappingStore) -> list[Finding]:
    """The original identifying values of ``ds`` (from the run's mapping store, by its SOP
    Instance UID) that are still in it."""
    rows = [original for kind, original in store.lookup(str(ds.get("SOPInstanceUID", "")))
            if kind == "identifiers"]
    if not rows:
        return []
    return [Finding(name, "", where, f"holds an original identifying value ({what})")
            for where, what in Identifiers.from_json(rows[0]).find(ds)]


def check_tree(root: str | os.PathLike[str], safe_private: SafePrivate | None = None,
               store: MappingStore | None = None, keep_text: frozenset[int] = frozenset()) -> tuple[int, list[Finding]]:
    """Check every DICOM file below ``root``; return (files checked, findings). ``store``: the
    run's mapping store, for the residual scan; ``keep_text``: the site's additions to the
    free-text attributes kept, as the run had them."""
    root = Path(root)
    profile = load_profile().keeping_text(keep_text)
    files, findings = 0, []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = path.relative_to(root).as_posix()
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:
            continue  # not DICOM: a journal, a report
        except Exception as e:  # a file that cannot be read is a finding; the check goes on
            files += 1
            findings.append(Finding(name, "", "", f"cannot be read: {type(e).__name__}: {e}"))
            continue
        files += 1
        try:
            for elem in ds.iterall():  # every value, so that an undecodable one is found here
                elem.value
            findings.extend(check_dataset(ds, name, profile, safe_private))
            if store is not None:
                findings.extend(residual_findings(ds, name, store))
        except Exception as e:
            findings.append(Finding(name, "", "", f"cannot be read completely: {type(e).__name__}: {e}"))
    return files, findings
