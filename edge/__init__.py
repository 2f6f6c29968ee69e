"""medhub's edge node: the part of the platform that runs at a hospital (``medlib edge``).

It harvests DICOM from the hospital's PACS (C-FIND then C-MOVE or C-GET, or DICOMweb), from
what is pushed to its C-STORE SCP and from its upload page; checks each series; lets out only
what the harvest's policy allows (identifiable files, anonymized files, or radiomic features);
and delivers that to the hub's ingest service as a new version of a dataset. It only calls out
(HTTPS to the hub). The site key and the mapping store never leave it.

Modules: :mod:`.settings` (its TOML file), :mod:`.journal` (what happened to every instance),
:mod:`.dicom` (the DICOM peers), :mod:`.qc` (the series checks), :mod:`.policy` (what leaves),
:mod:`.hub` (the ingest service's client), :mod:`.runner` (a harvest from start to delivery),
:mod:`.web` (the upload page), :mod:`.cli`.
"""
