"""medlib.radiomics: IBSI-defined radiomic features, batched in torch on CPU or GPU.

    from medlib.radiomics import Settings, extract
    table = extract(volume, mask, Settings(discretisation="fixed_bin_size", bin_width=25), spacing=(3, 1, 1))

Every IBSI 1 feature family (morphology, local intensity, intensity statistics, histogram and
intensity-volume histogram, GLCM, GLRLM, GLSZM, GLDZM, NGTDM, NGLDM) with IBSI's image
processing (interpolation, re-segmentation, discretisation), checked against every reference
value of the IBSI digital phantom and of the CT phantom under configurations A–E; and the
response maps of IBSI 2's convolutional filters (:mod:`medlib.radiomics.filters`, given as
``Settings(filters=...)``), checked against the IBSI 2 phase 1 maps and phase 2 values.
"""

from .extract import RadiomicsError, Settings, extract, extract_batch, extract_dataset, feature_table

__all__ = ["RadiomicsError", "Settings", "extract", "extract_batch", "extract_dataset", "feature_table"]
