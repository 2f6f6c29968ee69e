"""``medlib edge``: run the edge node of a site, check its settings, manage its upload page's users."""

from __future__ import annotations

import argparse
import getpass
import logging
import signal


def cmd_run(args: argparse.Namespace) -> int:
    from .runner import Edge
    from .settings import load
    from .web import WebServer

    settings = load(args.settings)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(asctime)s %(name)s] %(message)s")
    edge = Edge(settings)
    signal.signal(signal.SIGTERM, lambda *_: edge.stopping.set())
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # one line per PDU otherwise
    web = WebServer(settings, edge.inbox).start() if settings.web.enabled else None
    try:
        edge.serve()
    except KeyboardInterrupt:
        edge.stopping.set()
    finally:
        if web is not None:
            web.stop()
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .settings import load

    settings = load(args.settings)
    from medlib.anonymize import SiteKey

    key = SiteKey.load(settings.key_file)
    settings.token  # noqa: B018 - says what to do when it cannot be read
    print(f"site {settings.site}: settings, token and site key (fingerprint {key.fingerprint}) are in order; "
          f"SCP {settings.scp.aet} on port {settings.scp.port}, PACS {settings.pacs.aet} at "
          f"{settings.pacs.host}:{settings.pacs.port}")
    return 0


def cmd_add_user(args: argparse.Namespace) -> int:
    from .settings import load
    from .web import Users

    settings = load(args.settings)
    password = args.password or getpass.getpass(f"password for {args.name} on the upload page: ")
    Users(settings.state_dir).set(args.name, password)
    print(f"{args.name} may now log in to the upload page")
    return 0


def add_parser(sub) -> None:
    """The ``edge`` verb of ``medlib``."""
    edge = sub.add_parser("edge", help="the edge node at a hospital: harvest from the PACS, deliver to the hub")
    verbs = edge.add_subparsers(dest="edge_verb", metavar="VERB", required=True)
    for name, func, helptext in (("run", cmd_run, "take pushes and uploads, and run the hub's harvests for this site"),
                                 ("check", cmd_check, "check the settings, the site's token and its key")):
        verb = verbs.add_parser(name, help=helptext)
        verb.add_argument("-s", "--settings", default="edge.toml", help="the edge's settings file (default edge.toml)")
        verb.set_defaults(func=func)
    user = verbs.add_parser("add-user", help="let a person at the site log in to the upload page")
    user.add_argument("name")
    user.add_argument("-s", "--settings", default="edge.toml")
    user.add_argument("--password", help="(default: asked)")
    user.set_defaults(func=cmd_add_user)
