"""PyRadiomics' values for the three IBSI validation patients (CT, MR, PET; images from
../shared/reference/ibsi_validation/dicom, masks the IBSI's voxel masks kept beside this file):
pyradiomics.csv. Run with PyRadiomics (3.0.1 here) in its own environment (../shared/PEERS.md):

    PEERS/pyradiomics/bin/python tests/data/ibsi_validation/make_pyradiomics.py ../shared/reference/ibsi_validation/dicom tests/data/ibsi_validation
"""
import csv
import sys
from pathlib import Path

import SimpleITK as sitk
from radiomics import featureextractor, logger

logger.setLevel(40)
dicom, here = Path(sys.argv[1]), Path(sys.argv[2])
#: bin widths for each modality's intensities: HU, normalised MR, SUV
BIN_WIDTH = {"CT": 25, "MR_T1": 50, "PET": 0.25}
rows = {}
for patient in ("STS_001", "STS_002", "STS_003"):
    for modality, width in BIN_WIDTH.items():
        params = {"setting": {"binWidth": width, "label": 1, "additionalInfo": False},
                  "imageType": {"Original": {}, "LoG": {"sigma": [2.0, 4.0]}, "Wavelet": {}}}
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(dicom / patient / modality / "image")))
        image = sitk.Cast(reader.Execute(), sitk.sitkFloat64)
        mask = sitk.ReadImage(str(here / f"{patient}_{modality}_mask.nii.gz"))
        mask.CopyInformation(image)  # the same grid (the test checks it), written by another tool
        result = featureextractor.RadiomicsFeatureExtractor(params).execute(image, mask)
        rows[f"{patient}_{modality}"] = {k: float(v) for k, v in result.items() if not k.startswith("diagnostics")}
columns = sorted(rows)
with open(here / "pyradiomics.csv", "w", newline="") as f:
    out = csv.writer(f)
    out.writerow(["featureName", *columns])
    for name in sorted(rows[columns[0]]):
        out.writerow([name, *(repr(rows[c][name]) for c in columns)])
