"""Regenerate ``profile.json`` from the DICOM PS3.15 Table E.1-1 extraction.

    python -m medlib.anonymize.generate_profile ../shared/reference/dicom_ps3.15_annex_e_profile.json

The reference (621 rows, 2024b edition, innolitics/dicom-standard extraction) names options by
short keys; here they become medlib's option names, each with its CID 7050 code. Tags that
pydicom's dictionary knows also get their keyword. The test ``test_profile_data`` checks that
the committed file is what this script makes of the reference.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydicom.datadict import dictionary_keyword

OUTPUT = Path(__file__).with_name("profile.json")

#: reference key → (medlib option name, CID 7050 code, code meaning)
OPTIONS = {
    "rtnSafePrivOpt": ("retain_safe_private", "113111", "Retain Safe Private Option"),
    "rtnUIDsOpt": ("retain_uids", "113110", "Retain UIDs Option"),
    "rtnDevIdOpt": ("retain_device_identity", "113109", "Retain Device Identity Option"),
    "rtnInstIdOpt": ("retain_institution_identity", "113112", "Retain Institution Identity Option"),
    "rtnPatCharsOpt": ("retain_patient_characteristics", "113108", "Retain Patient Characteristics Option"),
    "rtnLongFullDatesOpt": ("retain_full_dates", "113106",
                            "Retain Longitudinal Temporal Information Full Dates Option"),
    "rtnLongModifDatesOpt": ("retain_modified_dates", "113107",
                             "Retain Longitudinal Temporal Information Modified Dates Option"),
    "cleanDescOpt": ("clean_descriptors", "113105", "Clean Descriptors Option"),
    "cleanStructContOpt": ("clean_structured_content", "113104", "Clean Structured Content Option"),
    "cleanGraphOpt": ("clean_graphics", "113103", "Clean Graphics Option"),
}
BASIC_PROFILE = ("113100", "Basic Application Confidentiality Profile")
CLEAN_PIXEL_DATA = ("113101", "Clean Pixel Data Option")


def _keyword(tag: str) -> str | None:
    group, element = tag.strip("()").split(",")
    try:
        return dictionary_keyword(int(group + element, 16)) or None
    except (KeyError, ValueError):
        return None  # a pattern such as (50XX,XXXX), or a tag pydicom does not know


def generate(reference: list[dict]) -> dict:
    rows = []
    for r in reference:
        tag = r["tag"] if r["tag"].startswith("(") and len(r["tag"]) == 11 else r["id"]
        rows.append({
            "tag": tag,
            "keyword": _keyword(r["tag"]) if r["tag"].startswith("(") else None,
            "name": r["name"],
            "basic": r["basicProfile"],
            "options": {OPTIONS[k][0]: r[k] for k in OPTIONS if k in r},
            "std_comp_iod": r["stdCompIOD"] == "Y",
        })
    return {
        "source": "DICOM PS3.15 2024b, Table E.1-1 (innolitics/dicom-standard extraction)",
        "basic_profile": {"code": BASIC_PROFILE[0], "meaning": BASIC_PROFILE[1]},
        "clean_pixel_data": {"code": CLEAN_PIXEL_DATA[0], "meaning": CLEAN_PIXEL_DATA[1]},
        "options": {name: {"code": code, "meaning": meaning} for name, code, meaning in OPTIONS.values()},
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    data = generate(json.loads(Path(args[0]).read_text()))
    OUTPUT.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {OUTPUT} ({len(data['rows'])} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
