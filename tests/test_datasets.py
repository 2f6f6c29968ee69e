"""medlib.datasets: only granted datasets open, as the same volume pydicom and MONAI give."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import tomli_w

import medlib.datasets as mds
from conftest import events
from medhub.catalog import load_catalog
from medhub.grants import GrantSigner
from medlib.manifest import write_manifest
from medlib.synthetic import write_ct_series

GROUPS = ("radiology-research", "course-students")


@pytest.fixture
def catalog(tmp_path: Path):
    """research-ct (two series) for radiology-research, teaching-ct for course-students, and a
    copy of teaching-ct read through an fsspec URL."""
    root = tmp_path / "data"
    write_ct_series(root / "research-ct" / "a", shape=(6, 20, 16), patient_id="P1")
    write_ct_series(root / "research-ct" / "b", shape=(3, 8, 8), spacing=(1.25, 0.5, 0.5), patient_id="P1")
    write_ct_series(root / "teaching-ct" / "s1", shape=(4, 12, 12), patient_id="P2")
    for name in ("research-ct", "teaching-ct"):
        write_manifest(root / name)
    common = {"sensitivity": "anonymized", "licence": "CC0-1.0", "modality": "CT", "owners": ["radiology-research"]}
    path = tmp_path / "datasets.toml"
    path.write_text(tomli_w.dumps({"dataset": [
        {"id": "research-ct", "title": "Research CT", "location": str(root / "research-ct"),
         "groups": ["radiology-research"], **common},
        {"id": "teaching-ct", "title": "Teaching CT", "location": str(root / "teaching-ct"),
         "groups": ["course-students"], **common},
        {"id": "teaching-url", "title": "Teaching CT, by URL", "location": f"file://{root / 'teaching-ct'}",
         "groups": ["course-students"], "open_access": True, **common},
    ]}))
    return load_catalog(path, GROUPS)


def test_a_user_lists_and_opens_only_their_groups_datasets(as_user, tmp_path: Path):
    as_user("alice", ["radiology-research"])
    assert [d["id"] for d in mds.list()] == ["research-ct"]
    assert mds.info("research-ct")["jsonld"]["@type"] == "Dataset"
    tree = mds.open("research-ct")
    assert len(tree.children) == 2
    shapes = sorted(node["image"].shape for node in tree.children.values())
    assert shapes == [(3, 8, 8), (6, 20, 16)]
    with pytest.raises(PermissionError, match=r"dataset 'teaching-ct' \(Teaching CT\) is not granted to alice: "
                                              r"it is readable by members of course-students"):
        mds.open("teaching-ct")
    with pytest.raises(mds.DatasetNotFound, match="no dataset 'nope'"):
        mds.info("nope")
    for bad in ("../teaching-ct", "research-ct/a", "..", "/etc"):
        with pytest.raises(ValueError, match="is not a dataset id"):
            mds.open(bad)
    log = events(tmp_path)
    assert [(e["action"], e["object"]["dataset"], e["outcome"]) for e in log] == [
        ("dataset-open", "research-ct", "success"), ("dataset-open", "teaching-ct", "denied")]


def test_without_a_valid_manifest_nothing_is_granted(as_user, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    as_user("bob", ["course-students"])
    monkeypatch.setenv("MEDHUB_GRANTS_KEY", GrantSigner(tmp_path / "another-hub.pem").public_key)
    with pytest.raises(mds.GrantsError, match="does not carry the hub's signature"):
        mds.list()
    monkeypatch.delenv("MEDHUB_GRANTS")
    with pytest.raises(mds.GrantsError, match="MEDHUB_GRANTS is not set"):
        mds.list()


def by_hand(folder: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Read with pydicom, sort by position along the normal, rescale: the reference volume."""
    slices = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    normal = np.cross(*np.array(slices[0].ImageOrientationPatient, float).reshape(2, 3))
    slices.sort(key=lambda ds: float(np.dot(normal, np.array(ds.ImagePositionPatient, float))))
    volume = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in slices])
    z = [float(np.dot(normal, np.array(ds.ImagePositionPatient, float))) for ds in slices]
    return volume, (z[1] - z[0], *map(float, slices[0].PixelSpacing))


def test_open_gives_the_volume_pydicom_and_monai_give(as_user, catalog):
    from monai.transforms import LoadImage

    as_user("alice", ["radiology-research"])
    folder = catalog[0].path / "a"
    expected, spacing = by_hand(folder)
    node = next(n for n in mds.open("research-ct").children.values() if n["image"].shape[0] == 6)
    image = node["image"]
    assert image.chunks is not None  # lazy: dask-backed until loaded
    np.testing.assert_array_equal(image.values, expected)
    assert image.dtype == np.int16  # slope 1, integer intercept: exact in 16 bits
    assert tuple(node.attrs["spacing"]) == pytest.approx(spacing)
    assert float(image.z[1] - image.z[0]) == pytest.approx(spacing[0])
    assert float(image.x[1]) == pytest.approx(spacing[2]) and image.z.attrs["units"] == "mm"
    assert node.attrs["Modality"] == "CT" and node.attrs["SeriesInstanceUID"] == node.name
    monai_image = LoadImage(reader="PydicomReader", image_only=True)(str(folder))
    np.testing.assert_array_equal(np.asarray(monai_image), expected.transpose(2, 1, 0))
    (item,) = [i for i in mds.as_monai("research-ct") if i["image"].shape[-1] == 6]
    np.testing.assert_array_equal(np.asarray(item["image"]), np.asarray(monai_image))
    np.testing.assert_allclose(np.asarray(item["image"].affine), np.asarray(monai_image.affine), atol=1e-4)


def test_monai_transforms_and_cache_apply(as_user):
    from monai.transforms import EnsureChannelFirstd, ScaleIntensityRanged

    as_user("bob", ["course-students"])
    data = mds.as_monai("teaching-ct", transforms=[EnsureChannelFirstd("image", channel_dim="no_channel"),
                                                   ScaleIntensityRanged("image", -1000, 1000, 0, 1, clip=True)],
                        cache=True)
    (item,) = list(data)
    assert tuple(item["image"].shape) == (1, 12, 12, 4)
    assert float(item["image"].min()) >= 0 and float(item["image"].max()) <= 1


def test_verify_names_every_tampered_or_missing_file(as_user, catalog, tmp_path: Path):
    as_user("bob", ["course-students"])
    assert mds.verify("teaching-ct").ok
    root = catalog[1].path
    victim, gone = sorted((root / "s1").glob("*.dcm"))[:2]
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")
    gone.unlink()
    (root / "s1" / "extra.dcm").write_bytes(b"new")
    result = mds.verify("teaching-ct")
    assert not result.ok
    assert result.changed == [f"s1/{victim.name}"] and result.missing == [f"s1/{gone.name}"]
    assert result.unlisted == ["s1/extra.dcm"]
    assert f"s1/{victim.name}" in str(result)
    verified = [e for e in events(tmp_path) if e["action"] == "dataset-verify"]
    assert [e["outcome"] for e in verified] == ["success", "failure"]
    assert verified[1]["details"]["changed"] == [f"s1/{victim.name}"]


def test_a_dataset_at_a_url_is_copied_once_and_read_there(as_user, tmp_path: Path):
    as_user("bob", ["course-students"])
    assert mds.info("teaching-url")["path"].startswith("file://")
    (node,) = mds.open("teaching-url").children.values()
    assert node["image"].shape == (4, 12, 12)
    assert mds.local_root("teaching-url") == tmp_path / "cache" / "datasets" / "teaching-url"
    assert mds.verify("teaching-url").ok


def test_dataset_browser_shows_grants_and_series_in_niivue_with_the_value_at_the_crosshair(as_user):
    import nibabel

    from medlib.viewer import PRESETS
    from medlib.widgets import DatasetBrowser

    as_user("alice", ["radiology-research"])
    browser = DatasetBrowser()
    assert "research-ct" in browser.table.value and "teaching-ct" not in browser.table.value
    assert browser.viewer is None  # nothing opened before a pick
    browser.dataset.value = "research-ct"
    assert len(browser.series.options) == 2
    browser.series.value = next(v for label, v in browser.series.options if "6 slices" in label)
    viewer = browser.viewer
    assert viewer.kind == "niivue" and viewer.unit == "HU"
    (volume,) = viewer.view.volumes
    nii = nibabel.Nifti1Image.from_bytes(volume.data)
    node = browser._tree[browser.series.value]
    assert nii.shape == tuple(reversed(node["image"].shape))  # x, y, z
    # the voxel sizes NiiVue draws with are the series' spacing: the aspect ratio is right
    np.testing.assert_allclose(nibabel.affines.voxel_sizes(nii.affine), list(reversed(node.attrs["spacing"])))
    width, level = PRESETS["CT soft tissue"]
    assert (volume.cal_min, volume.cal_max) == (level - width / 2, level + width / 2)
    viewer.preset.value = "CT bone"
    width, level = PRESETS["CT bone"]
    assert (volume.cal_min, volume.cal_max) == (level - width / 2, level + width / 2)
    viewer._located({"vox": [3, 2, 1], "mm": [1.0, 2.0, 3.0], "values": []})  # what NiiVue sends on a click
    expected = node["image"].values[1, 2, 3]
    assert f"<b>{float(expected):g} HU</b>" in viewer.status.value and "slice 1" in viewer.status.value


def test_the_viewer_shows_overlays_and_falls_back_to_slices_where_niivue_cannot_load(as_user, monkeypatch):
    import sys
    from io import BytesIO

    from PIL import Image

    import medlib.datasets as mds
    from medlib.viewer import PRESETS, SeriesViewer, window

    assert window(np.array([-1000, -160, 40, 240, 3000]), 400, 40).tolist() == [0, 0, 128, 255, 255]
    as_user("alice", ["radiology-research"])
    node = next(n for n in mds.open("research-ct").children.values() if n["image"].shape[0] == 6)
    mask = node["image"].values > 0
    viewer = SeriesViewer(node, overlays={"dense": mask})
    assert len(viewer.view.volumes) == 2 and viewer.view.volumes[1].opacity == 0.5
    viewer.opacity["dense"].value = 0.8
    assert viewer.view.volumes[1].opacity == 0.8
    with pytest.raises(ValueError, match="overlay 'dense' has shape"):
        SeriesViewer(node, overlays={"dense": mask[1:]})
    with pytest.raises(TypeError, match="a series of medlib.datasets.open"):
        SeriesViewer(mask)

    monkeypatch.setitem(sys.modules, "ipyniivue", None)  # as where the widget is not installed
    viewer = SeriesViewer(node)
    assert viewer.kind == "png" and "The NiiVue viewer could not load" in viewer.children[0].value
    slices = viewer.view
    assert slices.slice.max == 5 and slices.slice.value == 3
    assert slices.image.layout.width == f"{min(node['image'].shape[2] * 4, 512)}px"  # not stretched to the cell
    shown = np.asarray(Image.open(BytesIO(slices.image.value)))
    np.testing.assert_array_equal(shown, window(slices.current_slice, *PRESETS["CT soft tissue"]))
    slices.preset.value = "CT bone"
    slices.slice.value = 0
    np.testing.assert_array_equal(np.asarray(Image.open(BytesIO(slices.image.value))),
                                  window(slices.current_slice, *PRESETS["CT bone"]))
    assert "slice 1/6" in viewer.status.value


def test_the_header_index_is_remade_when_a_file_changes(as_user, catalog, tmp_path: Path):
    as_user("bob", ["course-students"])
    (node,) = mds.open("teaching-ct").children.values()
    before = node["image"].values
    assert (tmp_path / "cache" / "index" / "teaching-ct.json").is_file()
    path = sorted((catalog[1].path / "s1").glob("*.dcm"))[0]
    ds = pydicom.dcmread(path)
    ds.RescaleIntercept = float(ds.RescaleIntercept) + 100
    ds.save_as(path)
    (node,) = mds.open("teaching-ct").children.values()
    after = node["image"].values
    changed = [k for k in range(after.shape[0]) if not np.array_equal(after[k], before[k])]
    assert len(changed) == 1 and np.array_equal(after[changed[0]], before[changed[0]] + 100)


def test_radiomics_over_a_dataset_in_batches(as_user, tmp_path: Path):
    from medlib.radiomics import RadiomicsError, Settings, extract, extract_dataset

    as_user("alice", ["radiology-research"])
    tree = mds.open("research-ct")
    masks = {}
    for uid, node in tree.children.items():
        mask = np.zeros(node["image"].shape, bool)
        mask[:, 2:-2, 2:-2] = True
        masks[uid] = mask
    settings = Settings(discretisation="fixed_bin_size", bin_width=25, families=("morph", "stat", "cm"))
    table = extract_dataset("research-ct", masks, settings, batch=1, progress=False)
    assert sorted(table.index) == sorted(masks)
    for uid in masks:  # the same as one series alone; the spacing comes from the series' coordinates
        image = tree[uid]["image"]
        alone = extract(image, masks[uid], settings).iloc[0]
        np.testing.assert_allclose(table.loc[uid].to_numpy(float), alone.to_numpy(float), rtol=1e-9, equal_nan=True)
        voxel = np.prod([float(np.diff(image[d].values[:2])[0]) for d in ("z", "y", "x")])
        assert alone["morph_approximate_volume"] == pytest.approx(masks[uid].sum() * abs(voxel))
    assert [e["action"] for e in events(tmp_path)][-1] == "export"

    # an RTSTRUCT drawn on a series of the dataset stands for its mask
    from segmentations import write_rtstruct

    from medlib.datasets.series import find_series
    from medlib.radiomics.masks import Grid, mask

    (series,) = find_series(tmp_path / "data" / "research-ct" / "a")
    square = np.array([[4, 4], [4, 12], [12, 12], [12, 4]], dtype=float)
    contours = write_rtstruct([Path(s.path) for s in series.slices], {1: square, 2: square}, tmp_path / "rs.dcm")
    by_file = extract_dataset("research-ct", {series.uid: contours}, settings, progress=False, roi="GTV")
    drawn = mask(contours, Grid.of(series))
    assert drawn.sum() == 2 * 81
    alone = extract(tree[series.uid]["image"], drawn, settings).iloc[0]
    np.testing.assert_allclose(by_file.loc[series.uid].to_numpy(float), alone.to_numpy(float), rtol=1e-9, equal_nan=True)
    with pytest.raises(RadiomicsError, match="segments series"):
        extract_dataset("research-ct", {next(u for u in masks if u != series.uid): contours}, settings, progress=False)
