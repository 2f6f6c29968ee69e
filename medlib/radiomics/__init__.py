"""medlib.radiomics: IBSI-defined radiomic features, batched in torch on CPU or GPU.

    from medlib.radiomics import Settings, extract
    table = extract(volume, mask, Settings(discretisation="fixed_bin_size", bin_width=25))

Implemented so far: intensity-based statistics, intensity histogram, intensity-volume histogram,
GLCM and GLRLM (six IBSI texture aggregations), NGTDM and NGLDM (2D, 2.5D, 3D), checked against
every IBSI 1 digital phantom reference value of these features.
"""

from .extract import RadiomicsError, Settings, extract, extract_batch, extract_dataset, feature_table

__all__ = ["RadiomicsError", "Settings", "extract", "extract_batch", "extract_dataset", "feature_table"]
