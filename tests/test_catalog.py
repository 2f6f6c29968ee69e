"""The dataset catalog: every bad entry stops the hub with a message naming it; JSON-LD; grants."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import tomli_w

from medhub.catalog import granted, load_catalog
from medhub.errors import HubConfigError
from medhub.grants import GrantSigner
from medlib.datasets.grants import GrantsError, read_grants
from medlib.manifest import write_manifest

GROUPS = ("radiology-research", "course-students", "oncology")


def entry(tmp_path: Path, **changes) -> dict:
    folder = tmp_path / "lung-ct"
    if not folder.is_dir():
        folder.mkdir()
        (folder / "a.dcm").write_bytes(b"x")
        write_manifest(folder)
    return {"id": "lung-ct", "title": "Lung CT", "location": str(folder), "groups": ["radiology-research"],
            "owners": ["radiology-research"], "sensitivity": "anonymized", "licence": "CC-BY-4.0", "modality": "CT",
            "identifier": "https://doi.org/10.5281/zenodo.1", "provenance": "site A, medlib Basic Profile",
            "contact": "mailto:steward@example.org", **changes}


def write(tmp_path: Path, *entries: dict, **tables) -> Path:
    path = tmp_path / "datasets.toml"
    path.write_text(tomli_w.dumps({"dataset": list(entries), **tables}))
    return path


@pytest.mark.parametrize("changes, message", [
    ({"id": "../etc"}, r"dataset\[0\] \(../etc\).id: '../etc' is not a slug"),
    ({"id": "Lung CT"}, r"'Lung CT' is not a slug"),
    ({"colour": "blue"}, r"\[dataset\[0\] \(lung-ct\)\] has unknown setting\(s\) colour"),
    ({"location": "/nonexistent/lung"}, r"dataset\[0\] \(lung-ct\).location: /nonexistent/lung is not a directory"),
    ({"location": "relative/lung"}, r"location: 'relative/lung' must be an absolute path"),
    ({"location": "nosuchproto://bucket/x", "open_access": True}, r"location: cannot read nosuchproto://bucket/x"),
    ({"location": "s3://hospital-bucket/lung"}, r"location: s3://hospital-bucket/lung would be read with whatever "
                                                r"credential .* set open_access = true"),
    ({"location": "s3://open/lung", "open_access": True, "sensitivity": "pseudonymized"},
     r"open_access: open-access data must be anonymized"),
    ({"open_access": True}, r"open_access: is for datasets at a URL"),
    ({"groups": ["radiology-research", "cardiology"]}, r"groups: no such group: cardiology"),
    ({"groups": []}, r"groups: name the groups"),
    ({"owners": []}, r"owners: name the groups whose members own this dataset"),
    ({"owners": ["cardiology"]}, r"groups: no such group: cardiology"),
    ({"max_grant_days": 0}, r"max_grant_days: must be at least 1 day"),
    ({"sensitivity": "secret"}, r"sensitivity: must be one of identifiable, pseudonymized, anonymized"),
    ({"sensitivity": "identifiable"}, r"this dataset is identifiable: list radiology-research in identifiable_groups"),
    ({"identifiable_groups": ["oncology"]}, r"identifiable_groups: only for identifiable datasets"),
    ({"manifest": "../MANIFEST"}, r"manifest: must be a file name"),
    ({"manifest": "CHECKSUMS.sha256"}, r"CHECKSUMS.sha256 is missing; make it with `medhub catalog manifest /"),
])
def test_bad_entries_are_named(tmp_path: Path, changes: dict, message: str):
    with pytest.raises(HubConfigError, match=message):
        load_catalog(write(tmp_path, entry(tmp_path, **changes)), GROUPS)
    data = entry(tmp_path, **changes)
    data.pop("licence")
    with pytest.raises(HubConfigError, match=r"dataset\[0\].*licence: is required"):
        load_catalog(write(tmp_path, data), GROUPS)


def test_duplicate_ids_and_stray_tables(tmp_path: Path):
    with pytest.raises(HubConfigError, match="id 'lung-ct' is used twice"):
        load_catalog(write(tmp_path, entry(tmp_path), entry(tmp_path)), GROUPS)
    with pytest.raises(HubConfigError, match=r"unknown table\(s\) datasets"):
        load_catalog(write(tmp_path, entry(tmp_path), datasets=[{}]), GROUPS)


def test_identifiable_data_goes_only_to_groups_cleared_twice(tmp_path: Path):
    (catalog,) = load_catalog(write(tmp_path, entry(tmp_path, sensitivity="identifiable",
                                                    groups=["radiology-research"],
                                                    identifiable_groups=["radiology-research"])), GROUPS)
    assert granted([catalog], ["radiology-research"]) == [catalog]
    assert granted([catalog], ["oncology", "course-students"]) == []


def test_entries_are_schema_org_datasets(tmp_path: Path):
    local, remote = load_catalog(write(tmp_path, entry(tmp_path), entry(
        tmp_path, id="public-mr", location="memory://bucket/mr", open_access=True, identifier="")), GROUPS)
    doc = local.jsonld()
    assert doc["@context"] == "https://schema.org/" and doc["@type"] == "Dataset"
    assert doc["@id"] == doc["identifier"] == "https://doi.org/10.5281/zenodo.1"
    assert doc["license"] == "CC-BY-4.0" and doc["measurementTechnique"] == "CT"
    assert {"@type": "PropertyValue", "name": "provenance", "value": "site A, medlib Basic Profile"} in doc["additionalProperty"]
    assert doc["maintainer"] == {"@type": "Organization", "email": "steward@example.org"}
    assert "distribution" not in doc  # a host path is nobody's business
    assert "radiology-research" in doc["conditionsOfAccess"]
    other = remote.jsonld()
    assert other["@id"] == "urn:medhub:dataset:public-mr"
    assert other["distribution"][0]["contentUrl"] == "memory://bucket/mr"


def test_grants_manifest_is_signed_and_lists_only_the_users_grants(tmp_path: Path):
    catalog = load_catalog(write(tmp_path, entry(tmp_path), entry(
        tmp_path, id="teaching-ct", groups=["course-students"])), GROUPS)
    signer = GrantSigner(tmp_path / "grants.pem")
    assert (tmp_path / "grants.pem").stat().st_mode & 0o777 == 0o600
    document = signer.manifest("alice", ["course-students"], catalog, granted(catalog, ["course-students"]), "/datasets")
    grants = read_grants(document, signer.public_key)
    assert grants["user"] == "alice"
    assert [(d["id"], d["path"]) for d in grants["granted"]] == [("teaching-ct", "/datasets/teaching-ct")]
    assert "location" not in grants["granted"][0] and str(tmp_path) not in json.dumps(grants)  # no host paths
    assert grants["others"] == [{"id": "lung-ct", "title": "Lung CT", "groups": ["radiology-research"],
                                 "owners": ["radiology-research"]}]
    # an edited manifest, or another hub's key, grants nothing
    outer = json.loads(base64.b64decode(document))
    payload = json.loads(base64.b64decode(outer["payload"]))
    payload["granted"].append({"id": "lung-ct", "path": "/datasets/lung-ct"})
    outer["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    with pytest.raises(GrantsError, match="does not carry the hub's signature"):
        read_grants(base64.b64encode(json.dumps(outer).encode()).decode(), signer.public_key)
    with pytest.raises(GrantsError, match="does not carry the hub's signature"):
        read_grants(document, GrantSigner(tmp_path / "other.pem").public_key)
    assert GrantSigner(tmp_path / "grants.pem").public_key == signer.public_key  # the key persists
