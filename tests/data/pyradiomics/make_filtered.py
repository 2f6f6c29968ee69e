"""PyRadiomics' values of every image type medlib reads from parameter files, on its brain1 and
breast1 cases: filtered.csv. Run with PyRadiomics (3.0.1 here, with scikit-image for LBP2D, and trimesh and scipy<1.15 for LBP3D) in its
own environment (../shared/PEERS.md):

    PEERS/pyradiomics/bin/python tests/data/pyradiomics/make_filtered.py tests/data/pyradiomics filtered.csv
"""
import csv, sys
import SimpleITK as sitk
from radiomics import featureextractor, logger
logger.setLevel(40)
data, out = sys.argv[1], sys.argv[2]
params = {"setting": {"binWidth": 25, "label": 1, "additionalInfo": False, "voxelArrayShift": 0},
          "imageType": {"Original": {}, "LoG": {"sigma": [1.0, 3.0]}, "Wavelet": {}, "Square": {"voxelArrayShift": 1000},
                        "SquareRoot": {}, "Logarithm": {}, "Exponential": {}, "Gradient": {"binCount": 16}, "LBP2D": {},
                        "LBP3D": {"binWidth": 0.25}},
          "featureClass": {c: None for c in ("firstorder", "glcm", "glrlm", "glszm", "ngtdm", "gldm")}}
extractor = featureextractor.RadiomicsFeatureExtractor(params)
rows = {}
for case in ("brain1", "breast1"):
    result = extractor.execute(f"{data}/{case}_image.nrrd", f"{data}/{case}_label.nrrd")
    rows[case] = {k: float(v) for k, v in result.items() if not k.startswith("diagnostics")}
names = sorted(rows["brain1"])
with open(out, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["featureName", "brain1", "breast1"])
    for n in names:
        w.writerow([n, repr(rows["brain1"][n]), repr(rows["breast1"].get(n, float("nan")))])
print(len(names))
