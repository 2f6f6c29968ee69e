"""``medlib``: the library's command line inside a notebook server. Verbs wrap functions."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from . import __version__, audit
from .errors import MedlibError



def cmd_whoami(args: argparse.Namespace) -> int:
    from .identity import whoami

    identity = whoami()
    if args.json:
        print(json.dumps(asdict(identity)))
    else:
        for key, value in asdict(identity).items():
            print(f"{key:13} {', '.join(value) if isinstance(value, tuple) else value}")
    return 0


def cmd_synthetic_ct(args: argparse.Namespace) -> int:
    from .synthetic import write_ct_series

    paths = write_ct_series(args.folder, patient_id=args.patient_id, shape=(args.slices, args.size, args.size))
    print(f"wrote {len(paths)} files to {args.folder}")
    return 0


def cmd_anonymize_keygen(args: argparse.Namespace) -> int:
    from .anonymize import SiteKey

    key = SiteKey.generate(args.key_file)
    print(f"wrote a new site key to {args.key_file} (mode 0600, fingerprint {key.fingerprint}); "
          "keep it at the site and back it up: its pseudonyms cannot be made again without it")
    return 0


def cmd_anonymize_run(args: argparse.Namespace) -> int:
    from .anonymize import Anonymizer, SiteKey
    from .anonymize.mapping import MappingStore
    from .anonymize.pixels import load_rules
    from .anonymize.free_text import load_keep_text
    from .anonymize.ocr import OcrSettings
    from .anonymize.profile import load_safe_private
    from .anonymize.tree import PixelPolicy, anonymize_tree

    key = SiteKey.load(args.key_file)
    safe_private = load_safe_private(args.safe_private) if args.safe_private else None
    anonymizer = Anonymizer(key, args.option or (), safe_private=safe_private,
                            keep_text=load_keep_text(args.keep_text) if args.keep_text else frozenset())
    rules = load_rules(args.pixel_rules) if args.pixel_rules else ()
    ocr = None if args.no_ocr else OcrSettings(**({"min_confidence": args.ocr_confidence}
                                                  if args.ocr_confidence is not None else {}))
    store = MappingStore(args.mapping_store, key) if args.mapping_store else None
    try:
        report = anonymize_tree(anonymizer, args.src, args.dst, quarantine=args.quarantine, workers=args.workers,
                                mapping_store=store, pixels=PixelPolicy(rules, ocr))
    finally:
        if store is not None:
            store.close()
    report_file = Path(args.report or f"anonymize-report-{time.strftime('%Y%m%dT%H%M%S')}.json")
    tmp = report_file.with_suffix(report_file.suffix + ".tmp")
    tmp.write_text(report.to_json())
    tmp.replace(report_file)
    audit.record("anonymize-run", {"files": len(report.files), **report.totals},
                 "failure" if report.totals.get("failed") else "success",
                 options=sorted(anonymizer.options), key=key.fingerprint)
    totals = ", ".join(f"{n} {what}" for what, n in sorted(report.totals.items())) or "no files"
    print(f"{totals}; report: {report_file} (it names source files: keep it at the site)")
    if report.beyond_table:
        print("acted on outside the profile's table: " + ", ".join(f"{k} ({n} files)" for k, n in report.beyond_table.items()))
    if report.residual:
        print(f"the residual scan replaced {report.residual} identifying value(s) the profile left (see the report)")
    return 1 if report.totals.get("failed") else 0


def cmd_anonymize_check(args: argparse.Namespace) -> int:
    from .anonymize import SiteKey
    from .anonymize.check import check_tree
    from .anonymize.free_text import load_keep_text
    from .anonymize.mapping import MappingStore
    from .anonymize.profile import load_safe_private

    if bool(args.mapping_store) != bool(args.key_file):
        raise SystemExit("--mapping-store and --key-file go together: the store opens only with its site key")
    store = MappingStore(args.mapping_store, SiteKey.load(args.key_file)) if args.mapping_store else None
    try:
        files, findings = check_tree(args.dst, load_safe_private(args.safe_private) if args.safe_private else None,
                                     store, load_keep_text(args.keep_text) if args.keep_text else frozenset())
    finally:
        if store is not None:
            store.close()
    for f in findings:
        print(f"{f.file}: {f.tag} {f.keyword}: {f.reason}")
    print(f"{files} files checked, {len(findings)} residual identifier(s)")
    return 1 if findings else 0


def cmd_anonymize_reidentify(args: argparse.Namespace) -> int:
    from .anonymize import SiteKey
    from .anonymize.mapping import MappingStore

    store = MappingStore(args.store, SiteKey.load(args.key_file))
    unknown = 0
    for pseudonym in args.pseudonym:
        found = store.lookup(pseudonym)
        unknown += not found
        for kind, original in found or [("unknown", "(not in the store)")]:
            print(f"{pseudonym}\t{kind}\t{original}")
    store.close()
    audit.record("reidentify", {"pseudonyms": len(args.pseudonym), "found": len(args.pseudonym) - unknown},
                 "success" if not unknown else "failure", store=str(args.store))
    return 1 if unknown else 0


def cmd_radiomics(args: argparse.Namespace) -> int:
    from .radiomics import Settings, extract
    from .radiomics.io import read_roi, settings_from_params

    overrides = {"device": args.device, "names": args.names}
    settings, label = settings_from_params(args.params, **overrides) if args.params else (Settings(**overrides), 1)
    if args.filter:
        from dataclasses import replace

        from .radiomics.filters import parse

        settings = replace(settings, filters=settings.filters + tuple(parse(f) for f in args.filter))
    image, mask, spacing = read_roi(args.image, args.mask, args.roi, label)
    table = extract(image, mask, settings, spacing=spacing)
    table.insert(0, "image", str(args.image))
    if args.output:
        table.to_csv(args.output, index=False)
        print(f"wrote {len(table.columns) - 1} features to {args.output}")
    else:
        for name, value in table.iloc[0].items():
            print(f"{name}\t{value}")
    audit.record("export", {"features": len(table.columns) - 1}, image=str(args.image), mask=str(args.mask))
    return 0


def cmd_qa_check(args: argparse.Namespace) -> int:
    from .qa import Profile, check_dataset

    reference = Profile.load(args.profile) if args.profile else None
    reports = check_dataset(args.dataset, args.version, reference=reference, modalities=args.modality or None)
    for report in reports:
        print(f"{'ok    ' if report.passed else 'FAILED'} {report.series} ({report.modality}, {report.instances} files)")
        for problem in report.problems:
            print(f"       {problem}")
    failed = sum(not r.passed for r in reports)
    print(f"{len(reports) - failed} of {len(reports)} series passed")
    return 1 if failed else 0


def cmd_qa_drift(args: argparse.Namespace) -> int:
    from .qa import Profile, drift

    reference = Profile.load(args.profile)
    data = Path(args.folder) if args.folder else args.dataset
    if data is None:
        raise ValueError("name the batch: a dataset (DATASET) or a folder (--folder)")
    report = drift(reference, data, version=args.version, alpha=args.alpha, folder=args.report)
    for row in report.document["tests"]:
        print(f"{'DRIFT' if row['drifted'] else 'ok   '} {row['variable']:40} adjusted p {row['p_adjusted']:.3g}")
    for line in report.document["not_tested"]:
        print(f"not tested: {line}")
    print(f"report: {report.folder}")
    return report.exit_code


def _qa_parser(sub) -> None:
    qa = sub.add_parser("qa", help="input quality checks and drift of a dataset (medlib.qa)")
    verbs = qa.add_subparsers(dest="qa_verb", metavar="VERB", required=True)
    check = verbs.add_parser("check", help="check every series of a dataset (exit 1 if any failed)")
    check.add_argument("dataset")
    check.add_argument("--version", help="a version of a versioned dataset (default: the newest)")
    check.add_argument("--profile", metavar="FILE", help="a reference profile (qa.profile(...).save): the training "
                                                         "set's modalities, body parts and acquisition ranges")
    check.add_argument("--modality", action="append", help="an expected modality (repeat for more)")
    check.set_defaults(func=cmd_qa_check)
    drifted = verbs.add_parser("drift", help="compare a batch with a reference profile: acquisition and image "
                                             "statistics (exit 1 on drift; the model's variables need Python)")
    drifted.add_argument("profile", help="the reference profile (JSON, qa.profile(...).save)")
    drifted.add_argument("dataset", nargs="?", help="the batch: a granted dataset")
    drifted.add_argument("--version", help="its version (default: the newest)")
    drifted.add_argument("--folder", help="the batch: a folder of DICOM files instead of a dataset")
    drifted.add_argument("--alpha", type=float, default=0.05, help="false-discovery rate (default 0.05)")
    drifted.add_argument("--report", metavar="FOLDER", help="where to store the report (default ~/qa-reports/drift-…)")
    drifted.set_defaults(func=cmd_qa_drift)


def cmd_federated_site(args: argparse.Namespace) -> int:
    from .train.kits import harden_site

    path = harden_site(args.kit, args.policy)
    print(f"{args.kit}: no code from the centre, only medlib's executor, logs kept here; policy {path}")
    return 0


def cmd_federated_centre(args: argparse.Namespace) -> int:
    from .train.kits import prepare_centre

    print(f"{prepare_centre(args.kit)}: medlib's controller allowed")
    return 0


def cmd_federated_digest(args: argparse.Namespace) -> int:
    from .train.recipe import parse

    recipe = parse(Path(args.recipe).read_bytes())
    print(recipe.digest)
    return 0


def _federated_parser(sub) -> None:
    fed = sub.add_parser("federated", help="NVIDIA FLARE startup kits for medhub, and recipes' digests")
    verbs = fed.add_subparsers(dest="federated_verb", metavar="VERB", required=True)
    site = verbs.add_parser("site", help="harden a site's startup kit and install its policy")
    site.add_argument("kit", help="the site's startup kit (the folder with startup/ and local/)")
    site.add_argument("--policy", required=True, help="the site's policy file (TOML: approved, signers, datasets, ...)")
    site.set_defaults(func=cmd_federated_site)
    centre = verbs.add_parser("centre", help="allow medlib's controller in the server's startup kit")
    centre.add_argument("kit")
    centre.set_defaults(func=cmd_federated_centre)
    digest = verbs.add_parser("digest", help="print a recipe's digest (what a site approves)")
    digest.add_argument("recipe", help="the recipe, a JSON file")
    digest.set_defaults(func=cmd_federated_digest)


def _anonymize_parser(sub) -> None:
    from .anonymize import load_profile

    anon = sub.add_parser("anonymize", help="de-identify DICOM files by the DICOM PS3.15 confidentiality profile")
    verbs = anon.add_subparsers(dest="anonymize_verb", metavar="VERB", required=True)
    keygen = verbs.add_parser("keygen", help="create a site key file (mode 0600)")
    keygen.add_argument("key_file")
    keygen.set_defaults(func=cmd_anonymize_keygen)

    options = load_profile().option_codes
    run = verbs.add_parser(
        "run", help="anonymize every file below SRC into DST",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="options (--option NAME, repeatable; the Basic Profile always applies):\n"
        + "\n".join(f"  {name:32} {meaning} (DCM {code})" for name, (code, meaning) in sorted(options.items())),
    )
    run.add_argument("src")
    run.add_argument("dst")
    run.add_argument("--key-file", required=True, help="the site key (see `medlib anonymize keygen`)")
    run.add_argument("--option", action="append", choices=sorted(options), metavar="NAME",
                     help="a PS3.15 option (listed below)")
    run.add_argument("--workers", type=int, default=1, help="processes to use (default 1)")
    run.add_argument("--quarantine", help="folder for files that may carry burned-in text (default DST.quarantine)")
    run.add_argument("--report", help="JSON report file (default anonymize-report-<time>.json here)")
    run.add_argument("--mapping-store", metavar="FILE",
                     help="record pseudonym -> original in this encrypted SQLite file, kept at the site, "
                          "for `medlib anonymize reidentify`")
    run.add_argument("--pixel-rules", metavar="FILE",
                     help="Clean Pixel Data Option: TOML rules of rectangles to blank per device "
                          "(see medlib/anonymize/pixels.py); matching burned-in candidates are cleaned, "
                          "not quarantined")
    run.add_argument("--no-ocr", action="store_true",
                     help="do not look for burned-in text with OCR (Tesseract): candidates no pixel rule "
                          "matches stay in quarantine")
    run.add_argument("--ocr-confidence", type=float, metavar="N",
                     help="OCR confidence (0-100) at which text still read after cleaning keeps a file in "
                          "quarantine (default: medlib.anonymize.ocr.OcrSettings.min_confidence)")
    run.add_argument("--keep-text", metavar="FILE",
                     help="more attributes outside PS3.15 Table E.1-1 whose free text the site has reviewed as safe "
                          "to keep, in the format of medlib/anonymize/free_text.json's keep rows (the residual "
                          "scan still reads them)")
    run.add_argument("--safe-private", metavar="FILE",
                     help="with --option retain_safe_private: more private attributes the site has verified "
                          "as safe, in the format of medlib/anonymize/safe_private.json (PS3.15 Table E.3.10-1 rows)")
    run.set_defaults(func=cmd_anonymize_run)
    reid = verbs.add_parser("reidentify", help="look pseudonyms (UIDs, ANON-… IDs, ANON^… names) up in a mapping store")
    reid.add_argument("pseudonym", nargs="+")
    reid.add_argument("--key-file", required=True, help="the site key the store was made with")
    reid.add_argument("--store", required=True, help="the mapping store (from `run --mapping-store`)")
    reid.set_defaults(func=cmd_anonymize_reidentify)
    check = verbs.add_parser("check", help="list residual identifiers and private tags in DST (exit 1 if any)")
    check.add_argument("dst")
    check.add_argument("--safe-private", metavar="FILE",
                       help="the site's safe private attributes that `run --safe-private` kept (not findings)")
    check.add_argument("--keep-text", metavar="FILE",
                       help="the site's free-text attributes that `run --keep-text` kept (not findings)")
    check.add_argument("--mapping-store", metavar="FILE",
                       help="the run's mapping store: also look for each file's original identifying values "
                            "(the residual scan), with --key-file")
    check.add_argument("--key-file", help="the site key the mapping store was made with")
    check.set_defaults(func=cmd_anonymize_check)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="medlib",
        description="medlib: medical-imaging research tools inside a medhub notebook server.",
    )
    p.add_argument("--version", action="version", version=f"medlib {__version__}")
    sub = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    who = sub.add_parser("whoami", help="print the server owner's identity")
    who.add_argument("--json", action="store_true", help="print JSON")
    who.set_defaults(func=cmd_whoami)
    syn = sub.add_parser("synthetic-ct", help="write a synthetic CT series")
    syn.add_argument("folder")
    syn.add_argument("--slices", type=int, default=16)
    syn.add_argument("--size", type=int, default=64, help="rows and columns")
    syn.add_argument("--patient-id", default="PAT-0001")
    syn.set_defaults(func=cmd_synthetic_ct)
    _anonymize_parser(sub)
    rad = sub.add_parser("radiomics", help="IBSI radiomic features of one region of interest")
    rad.add_argument("image", help="a DICOM series folder, a NIfTI (.nii, .nii.gz) or an NRRD file")
    rad.add_argument("mask", help="the mask: a label image in any of the same forms on the image's grid, or a DICOM "
                                  "SEG or RTSTRUCT file that segments the image (a DICOM series folder)")
    rad.add_argument("--roi", help="the segment (SEG) or ROI (RTSTRUCT) to describe, by name (default: the only one)")
    rad.add_argument("--params", metavar="FILE", help="a PyRadiomics parameter file (YAML), read with PyRadiomics' "
                                                      "conventions: setting, featureClass, imageType (what is not "
                                                      "implemented is refused by name)")
    rad.add_argument("--filter", action="append", metavar="FILTER",
                     help="also describe an IBSI 2 filter's response map, given as in Python: \"LoG(sigma=3)\", "
                          "\"Wavelet(wavelet='db3', subband='LLH', level=2)\", \"Riesz(of=Simoncelli(level=1), "
                          "order=(0, 2, 0))\" (medlib.radiomics.filters; repeat for several)")
    rad.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:1, ...")
    rad.add_argument("--names", choices=("ibsi", "pyradiomics"), default="ibsi",
                     help="column names: medlib's IBSI names (default) or PyRadiomics' where one exists")
    rad.add_argument("-o", "--output", metavar="CSV", help="write one CSV row (default: print name and value)")
    rad.set_defaults(func=cmd_radiomics)
    _qa_parser(sub)
    _federated_parser(sub)
    try:
        from medhub_edge.cli import add_parser as edge_parser
    except ImportError:  # a notebook image: the edge runs at hospitals, with the `edge` extra
        pass
    else:
        edge_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("MEDHUB_AUDIT_SOURCE", "cli")  # this process's audit events come from the CLI
    try:
        return args.func(args)
    except (MedlibError, ValueError) as e:
        print(f"medlib: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
