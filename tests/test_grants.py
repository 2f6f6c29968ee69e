"""Dataset grants: group intersection, Docker binds and the local per-user view."""

from __future__ import annotations

from pathlib import Path

from medhub import grants
from medhub.catalog import Dataset, granted


def catalog(tmp_path: Path) -> list[Dataset]:
    out = []
    for id_, groups in (("research-ct", ("radiology-research",)), ("teaching-ct", ("course-students", "staff"))):
        (tmp_path / id_).mkdir(exist_ok=True)
        out.append(Dataset(id=id_, title=id_, location=str(tmp_path / id_), groups=groups, sensitivity="anonymized",
                           licence="CC0-1.0"))
    return out


def test_granted_is_the_group_intersection(tmp_path: Path):
    datasets = catalog(tmp_path)
    assert [d.id for d in granted(datasets, ["staff"])] == ["teaching-ct"]
    assert [d.id for d in granted(datasets, ["radiology-research", "staff"])] == ["research-ct", "teaching-ct"]
    assert granted(datasets, ["visitors"]) == []


def test_docker_binds_are_read_only_under_datasets(tmp_path: Path):
    remote = Dataset(id="remote-ct", title="r", location="s3://bucket/ct", groups=("staff",),
                     sensitivity="anonymized", licence="CC0-1.0")
    assert grants.docker_volumes([*catalog(tmp_path)[:1], remote]) == {  # a URL is read there, not mounted
        str(tmp_path / "research-ct"): {"bind": "/datasets/research-ct", "mode": "ro"}
    }


def test_local_view_is_rebuilt_so_revoked_grants_disappear(tmp_path: Path):
    datasets = catalog(tmp_path)
    view = tmp_path / "views" / "alice"
    grants.local_view(view, datasets)
    assert sorted(p.name for p in view.iterdir()) == ["research-ct", "teaching-ct"]
    assert (view / "research-ct").resolve() == tmp_path / "research-ct"
    grants.local_view(view, datasets[1:])  # alice left radiology-research
    assert sorted(p.name for p in view.iterdir()) == ["teaching-ct"]
    assert sorted(p.name for p in view.parent.iterdir()) == ["alice"]  # no leftovers
