"""``medlib``: the library's command line inside a notebook server. Verbs wrap functions."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from . import __version__
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except MedlibError as e:
        print(f"medlib: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
