"""medlib.datasets: the datasets your groups may use, in one line.

    import medlib.datasets as mds
    mds.list()                           # your grants, with catalog metadata
    tree = mds.open("lung-ct-2024")       # xarray.DataTree: one lazy volume per series, in mm
    ds = mds.as_monai("lung-ct-2024")     # MONAI Dataset of {"image": MetaTensor, ...}
    mds.verify("lung-ct-2024")            # every changed or missing file, by the manifest
    mds.versions("site-a-ct")             # a delivered dataset's versions, with their provenance
    mds.open("site-a-ct", version="v000001")   # ... and any of them, not only the newest
    mds.table("site-a-features")          # a delivered table (radiomic features) as a DataFrame

A dataset not granted raises ``PermissionError`` naming the groups that may read it. Every
open and verify is written to the audit log (:mod:`medlib.audit`).
"""

from ..versions import VersionNotFound
from .access import DatasetNotFound, as_monai, info, local_root, series, table, verify, versions
from .access import list_datasets as list  # noqa: A001 - the API's name
from .access import open_dataset as open  # noqa: A001 - the API's name
from .grants import GrantsError

__all__ = ["DatasetNotFound", "GrantsError", "VersionNotFound", "as_monai", "info", "list", "local_root", "open",
           "series", "table", "verify", "versions"]
