"""Versioned datasets (medlib.versions): each version complete and immutable, the newest
switched in one step, readers never seeing part of one."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest

from medlib import versions
from medlib.manifest import verify_manifest


def staged(folder: Path, files: dict[str, bytes]) -> dict[str, tuple[Path, str]]:
    out = {}
    for name, data in files.items():
        path = folder / name.replace("/", "_")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out[name] = (path, hashlib.sha256(data).hexdigest())
    return out


def test_each_version_carries_the_last_and_stays_as_it_was(tmp_path: Path):
    root = tmp_path / "dataset"
    with pytest.raises(versions.VersionNotFound, match="nothing has been delivered"):
        versions.resolve(root)
    first = versions.publish(root, staged(tmp_path / "a", {"s/1.dcm": b"one", "s/2.dcm": b"two"}),
                             {"site": "site-a"}, {"summary": {"series": 1}})
    second = versions.publish(root, staged(tmp_path / "b", {"s/2.dcm": b"TWO", "t/3.dcm": b"three"}),
                              {"site": "site-a"})
    assert (first, second) == ("v000001", "v000002") and versions.versions(root) == [first, second]
    assert versions.resolve(root) == root / second and os.readlink(root / versions.CURRENT) == second
    assert (root / second / "s" / "1.dcm").read_bytes() == b"one"  # carried forward
    assert (root / second / "s" / "2.dcm").read_bytes() == b"TWO"  # replaced in the new version ...
    assert (root / first / "s" / "2.dcm").read_bytes() == b"two"  # ... never in the old one
    assert versions.provenance(root, second)["base"] == first
    assert json.loads((root / first / versions.QC_REPORT).read_text()) == {"summary": {"series": 1}}
    for name in (first, second):
        assert verify_manifest(root / name).ok  # the manifest covers the records too
    # read-only, files and folders (the tests may run as root, whom modes do not stop: check the modes)
    assert (root / first / "s" / "1.dcm").stat().st_mode & 0o222 == 0 and (root / first).stat().st_mode & 0o222 == 0
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # nothing half-made left


def test_paths_outside_a_version_are_refused(tmp_path: Path):
    for bad in ("../x.dcm", "/etc/passwd", "a/../../b", ".hidden/x", "provenance.json", ""):
        with pytest.raises(ValueError):
            versions.publish(tmp_path / "d", {bad: (tmp_path / "f", "0" * 64)}, {})
    assert versions.versions(tmp_path / "d") == []


def test_a_reader_sees_the_old_version_or_the_new_one_never_a_mix(tmp_path: Path):
    root = tmp_path / "dataset"
    versions.publish(root, staged(tmp_path / "v0", {f"s/{i}.dcm": b"0" for i in range(50)}), {})
    seen, stop = [], threading.Event()

    def read() -> None:
        while not stop.is_set():
            folder = versions.resolve(root)
            contents = {(folder / "s" / f"{i}.dcm").read_bytes() for i in range(50)}
            seen.append(contents)

    reader = threading.Thread(target=read)
    reader.start()
    for n in range(1, 8):
        versions.publish(root, staged(tmp_path / f"v{n}", {f"s/{i}.dcm": str(n).encode() for i in range(50)}), {})
    stop.set()
    reader.join()
    assert seen and all(len(contents) == 1 for contents in seen)  # every read: one version's files only
    assert len(versions.versions(root)) == 8


def test_a_deleted_version_leaves_its_tombstone_and_its_name_is_never_given_again(tmp_path: Path):
    root = tmp_path / "dataset"
    first = versions.publish(root, staged(tmp_path / "a", {"s/1.dcm": b"one"}), {"site": "site-a"})
    second = versions.publish(root, staged(tmp_path / "b", {"s/2.dcm": b"two"}), {"site": "site-a"})
    stone = versions.tombstone(root, second, "tara", "consent withdrawn", "2026-12-02T05:00:00.000000Z")
    assert stone["files"] == 4 and stone["manifest_sha256"] == hashlib.sha256(
        (root / second / "MANIFEST.sha256").read_bytes()).hexdigest()  # two data files, provenance, qc
    versions.delete(root, second, {**stone, "audit_seq": 7})
    assert versions.versions(root) == [first] and not (root / second).exists()
    assert versions.resolve(root) == root / first  # the newest left is current again
    assert versions.tombstones(root) == {second: {**stone, "audit_seq": 7}}
    with pytest.raises(versions.VersionNotFound, match="version v000002 was deleted at 2026-12-02T05:00:00.000000Z "
                                                       "by tara: consent withdrawn; there are: v000001"):
        versions.resolve(root, second)
    third = versions.publish(root, staged(tmp_path / "c", {"s/3.dcm": b"three"}), {"site": "site-a"})
    assert third == "v000003" and (root / third / "s" / "1.dcm").read_bytes() == b"one"
    assert sorted(p.name for p in root.iterdir()) == ["current", "v000001", "v000002.deleted.json", "v000003"]
    versions.delete(root, first, versions.tombstone(root, first, "tara", "superseded", "2026-12-02T06:00:00.000000Z"))
    versions.delete(root, third, versions.tombstone(root, third, "tara", "superseded", "2026-12-02T06:00:00.000000Z"))
    with pytest.raises(versions.VersionNotFound, match=r"every version of dataset was deleted \(the newest, "
                                                       "v000003, at 2026-12-02T06:00:00.000000Z by tara: superseded"):
        versions.resolve(root)  # none left: no current
