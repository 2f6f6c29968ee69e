"""Regenerate ``requirements.json``: how much each IOD requires the attributes whose PS3.15
action is a combined code (X/Z, X/D, Z/D, X/Z/D, X/Z/U*).

    python -m medlib.anonymize.generate_requirements

A combined code keeps the least information the IOD allows, so it needs the attribute's Type
in the IOD of the file (PS3.3): 1 (required, non-empty), 2 (required, may be empty) or 3
(optional). The module tables come from highdicom's copy of the standard (its ``_standard``
folder: the innolitics/dicom-standard extraction of PS3.3 and PS3.4, MIT licence), installed
with medhub's ``dev`` extra. For each SOP class's IOD and each combined-code attribute, the file
keeps the strictest Type any of the IOD's modules gives it, keyed by its path of sequence
keywords (``ReferencedStudySequence/ReferencedSOPInstanceUID``); conditional types count as
their unconditional ones, since the attribute is present whenever it is acted upon. The test
``test_requirements_data`` checks that the committed file is what this script makes.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from .profile import DATA

OUTPUT = Path(__file__).with_name("requirements.json")
STRICTNESS = {"1": 0, "1C": 0, "2": 1, "2C": 1, "3": 2}


def _standard(name: str):
    import highdicom

    return json.loads((resources.files(highdicom) / "_standard" / name).read_text()), highdicom.__version__


def generate() -> dict:
    combined = {row["keyword"] for row in json.loads(DATA.read_text())["rows"]
                if "/" in row["basic"] and row["keyword"]}
    sop_classes, version = _standard("sop_class_iod_map.json")
    iod_modules, _ = _standard("iod_module_map.json")
    module_attributes, _ = _standard("module_attribute_map.json")
    iods: dict[str, dict[str, str]] = {}
    for iod in sorted(set(sop_classes.values())):
        types: dict[str, str] = {}
        for module in iod_modules.get(iod, []):
            for attribute in module_attributes.get(module["key"], []):
                if attribute["keyword"] not in combined:
                    continue
                path = "/".join([*attribute["path"], attribute["keyword"]])
                kind = attribute["type"].rstrip("C")
                if path not in types or STRICTNESS[kind] < STRICTNESS[types[path]]:
                    types[path] = kind
        iods[iod] = dict(sorted(types.items()))
    return {
        "source": f"highdicom {version} _standard (innolitics/dicom-standard extraction of DICOM PS3.3/PS3.4)",
        "sop_classes": dict(sorted(sop_classes.items())),
        "iods": iods,
    }


def main() -> int:
    OUTPUT.write_text(json.dumps(generate(), separators=(",", ":")) + "\n")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
