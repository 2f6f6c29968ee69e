"""The access service's page, ``/services/medhub-access/``, in the hub's look: signed in through
the hub (OAuth). Users ask for datasets and see their requests and grants with the days left;
users see their exports and download the approved ones; owners decide on the requests for
their datasets, revoke grants of them, and review the exports they hold back. Every form calls
the same methods as the REST API (:class:`medhub.access.service.AccessHandler`)."""

from __future__ import annotations

import os
from html import escape
from typing import Any

from jupyterhub.services.auth import HubOAuthenticated
from tornado import web

from medlib.contract import time_left

from .service import AccessHandler
from .store import ExportState, GrantState, RequestState

PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Data access · medhub</title>
<link rel="stylesheet" href="{base}hub/static/css/style.min.css"></head><body>
<nav class="navbar border-bottom mb-3"><div class="container"><a class="navbar-brand" href="{base}hub/home"><b>medhub</b></a>
<span class="navbar-text">Signed in as <b id="user">{user}</b></span></div></nav>
<main class="container">{alert}
<h1 class="h3">Data access</h1>
<p class="text-muted">A dataset's owners decide who reads it, for what and until when. A grant starts with your next
server; when it ends, every server that mounts it is stopped (your home stays).</p>
<section class="card mb-4"><div class="card-body"><h2 class="h5">Ask for a dataset</h2>
<form method="post" id="ask" class="row g-2">{xsrf}<input type="hidden" name="action" value="ask">
<div class="col-md-3"><label class="form-label" for="dataset">Dataset</label>
<select class="form-select" name="dataset" id="dataset">{askable}</select></div>
<div class="col-md-4"><label class="form-label" for="purpose">Purpose</label>
<input class="form-control" name="purpose" id="purpose" placeholder="the study, the question" required></div>
<div class="col-md-3"><label class="form-label" for="approval">Ethics approval or protocol</label>
<input class="form-control" name="approval" id="approval" placeholder="EC-2026-017" required></div>
<div class="col-md-2"><label class="form-label" for="until">Until</label>
<input class="form-control" type="date" name="until" id="until" required></div>
<div class="col-12"><button class="btn btn-primary">Ask its owners</button></div></form></div></section>
<h2 class="h5">My requests</h2>{my_requests}
<h2 class="h5 mt-4">My grants</h2>{my_grants}
<h2 class="h5 mt-4">My exports</h2>
<p class="text-muted">Outputs leave the platform through a request (<code>medhub export request FILE
--justification ...</code> in your server): the owners of the datasets you work with review each one.</p>{my_exports}
{owner}
</main></body></html>"""

OWNER = """<hr class="my-4"><h2 class="h4">Datasets I own: {owned}</h2>
<h3 class="h5">Requests to decide</h3>{pending}
<h3 class="h5 mt-4">Grants of my datasets</h3>{grants}
<h3 class="h5 mt-4">Exports to review</h3>{exports}"""


def _table(rows: list[list[str]], head: tuple[str, ...], table_id: str, empty: str) -> str:
    if not rows:
        return f'<p class="text-muted" id="{table_id}">{escape(empty)}</p>'
    header = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="table table-sm" id="{table_id}"><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>'


def _when(value: str | None) -> str:
    return escape(value[:16].replace("T", " ")) if value else ""


class PageHandler(HubOAuthenticated, AccessHandler):
    """The page; signed in through the hub, not with a token header."""

    async def prepare(self) -> None:  # the cookie's user (HubOAuthenticated), not TokenHandler's header token
        pass

    def form(self, action: str, item_id: str, button: str, style: str, fields: str = "") -> str:
        return (f'<form method="post" class="d-flex gap-1">{self.xsrf_form_html()}'
                f'<input type="hidden" name="action" value="{action}"><input type="hidden" name="id" value="{item_id}">'
                f'{fields}<button class="btn btn-sm {style}" data-action="{action}">{button}</button></form>')

    def reviews(self, export: dict[str, Any]) -> str:
        return escape(", ".join(f"{r['dataset']}: {r['decision'] or 'waiting'}" + (f" ({r['by']})" if r["by"] else "")
                                for r in export["reviews"]) or "none needed")

    def state(self, item: dict[str, Any]) -> str:
        state = item["state"]
        colour = {"pending": "warning", "approved": "success", "active": "success", "refused": "danger",
                  "revoked": "danger"}.get(state, "secondary")
        return f'<span class="badge text-bg-{colour}">{escape(state)}</span>'

    @web.authenticated
    async def get(self, error: str = "") -> None:
        user = self.user()
        groups = set(await self.groups_of(user))
        owned = sorted(await self.owned())
        requests, grants = self.store.requests(user=user), self.store.grants(user=user)
        held = {g["dataset"] for g in grants if g["state"] == GrantState.ACTIVE}
        askable = [d for d in self.datasets.values() if not groups & set(d.readers()) and d.id not in held]
        my_requests = [[escape(r["dataset"]), escape(r["purpose"]), escape(r["approval"]), _when(r["until"]),
                        self.state(r), escape(r["decided_by"] or ""), escape(r["reason"] or ""),
                        self.form("withdraw", r["id"], "Withdraw", "btn-outline-secondary")
                        if r["state"] == RequestState.PENDING else ""] for r in reversed(requests)]
        my_grants = [[escape(g["dataset"]), escape(g["purpose"]), escape(g["approver"]), _when(g["starts"]),
                      _when(g["expires"]), time_left(g["expires"]) if g["state"] == GrantState.ACTIVE else "",
                      self.state(g), escape(g["revoke_reason"] or "")] for g in reversed(grants)]
        my_exports = [[escape(e["name"]), f"{e['size']:,} bytes", self.state(e), self.reviews(e),
                       escape("; ".join(e["flags"])),
                       f'<a class="btn btn-sm btn-primary" href="exports/{e["id"]}/download">Download</a> until '
                       f'{_when(e["download_until"])}' if e["state"] == ExportState.APPROVED else ""]
                      for e in reversed(self.store.exports(user=user))]
        owner = ""
        if owned:
            pending = [[escape(r["user"]), escape(r["dataset"]), escape(r["purpose"]), escape(r["approval"]),
                        _when(r["until"]),
                        self.form("approve", r["id"], "Approve", "btn-success",
                                  '<input class="form-control form-control-sm" type="date" name="until" '
                                  'title="shorten (optional)"><input class="form-control form-control-sm" '
                                  'name="reason" placeholder="note (optional)">') +
                        self.form("refuse", r["id"], "Refuse", "btn-outline-danger",
                                  '<input class="form-control form-control-sm" name="reason" placeholder="why" '
                                  'required>')]
                       for r in self.store.requests(datasets=set(owned), states=(RequestState.PENDING,))]
            theirs = [[escape(g["user"]), escape(g["dataset"]), escape(g["purpose"]), escape(g["approval"]),
                       escape(g["approver"]), _when(g["expires"]),
                       time_left(g["expires"]) if g["state"] == GrantState.ACTIVE else "", self.state(g),
                       self.form("revoke", g["id"], "Revoke", "btn-outline-danger",
                                 '<input class="form-control form-control-sm" name="reason" placeholder="why" '
                                 'required>') if g["state"] == GrantState.ACTIVE else escape(g["revoke_reason"] or "")]
                      for g in reversed(self.store.grants(datasets=set(owned)))]
            to_review = [[escape(e["user"]), escape(e["name"]), f"{e['size']:,} bytes", escape(e["justification"]),
                          escape("; ".join(e["flags"]) or "none"), self.reviews(e),
                          f'<a href="exports/{e["id"]}/preview" target="_blank">preview</a>',
                          (self.form("approve-export", e["id"], "Approve", "btn-success",
                                     '<input class="form-control form-control-sm" name="reason" '
                                     'placeholder="note (optional)">') +
                           self.form("refuse-export", e["id"], "Refuse", "btn-outline-danger",
                                     '<input class="form-control form-control-sm" name="reason" placeholder="why" '
                                     'required>')) if e["state"] == ExportState.PENDING else self.state(e)]
                         for e in reversed(self.store.exports(datasets=set(owned)))]
            owner = OWNER.format(
                exports=_table(to_review, ("user", "file", "size", "justification", "flags", "reviews", "", "decide"),
                               "to-review", "No export waits for your datasets."),
                owned=escape(", ".join(owned)),
                pending=_table(pending, ("user", "dataset", "purpose", "approval", "until", "decide"), "to-decide",
                               "No request waits for you."),
                grants=_table(theirs, ("user", "dataset", "purpose", "approval", "approver", "until", "left", "state",
                                       ""), "owned-grants", "No personal grants of your datasets."))
        self.finish(PAGE.format(
            base=escape(os.environ.get("JUPYTERHUB_BASE_URL", "/")), user=escape(user),
            alert=f'<div class="alert alert-danger" role="alert">{escape(error)}</div>' if error else "",
            xsrf=self.xsrf_form_html(),
            askable="".join(f'<option value="{escape(d.id)}">{escape(d.id)}: {escape(d.title)}</option>'
                            for d in askable),
            my_requests=_table(my_requests, ("dataset", "purpose", "approval", "until", "state", "decided by",
                                             "reason", ""), "my-requests", "You have asked for nothing yet."),
            my_exports=_table(my_exports, ("file", "size", "state", "reviews", "flags", ""), "my-exports",
                              "You have asked for no export."),
            my_grants=_table(my_grants, ("dataset", "purpose", "approver", "since", "until", "left", "state", "reason"),
                             "my-grants", "No personal grants; your groups' datasets need none."),
            owner=owner))

    @web.authenticated
    async def post(self) -> None:
        action, item = self.get_argument("action", ""), self.get_argument("id", "")
        fields = {name: self.get_argument(name, "") for name in ("dataset", "purpose", "approval", "until", "reason")}
        try:
            if action == "ask":
                await self.ask(fields)
            elif action in ("approve", "refuse"):
                await getattr(self, action)(item, {k: v for k, v in fields.items() if v})
            elif action == "withdraw":
                await self.withdraw(item)
            elif action == "revoke":
                await self.revoke(item, fields)
            elif action in ("approve-export", "refuse-export"):
                await self.review(item, "approved" if action == "approve-export" else "refused", fields["reason"])
            else:
                raise web.HTTPError(400, f"no action {action!r}")
        except web.HTTPError as e:
            self.set_status(e.status_code)
            await self.get(e.log_message or "")
            return
        self.redirect(self.request.path)
