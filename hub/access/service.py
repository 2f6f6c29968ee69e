"""The ``medhub-access`` hub service: users ask for datasets, their owners decide.

A user asks for a dataset with a purpose, the reference of the ethics approval or study
protocol it serves, and an end date: ``POST requests`` {dataset, purpose, approval, until}. The
dataset's owners (members of a group in its catalog entry's ``owners``) see it among
``GET requests?role=owner``, and approve it (``POST requests/<id>/approve`` {until?, reason?},
for as long as asked or less) or refuse it with a reason (``POST requests/<id>/refuse``);
its user sees the decision in ``GET requests``. An owner may also grant directly
(``POST grants`` {user, dataset, purpose, approval, until}) and revoke any grant of their
datasets (``POST grants/<id>/revoke`` {reason}). ``GET grants`` lists the caller's grants
(``?role=owner``: those of the datasets they own).

A grant is personal: who, which dataset, purpose, approval reference, approver, start and end.
The spawners give a server the grants active when it starts (:mod:`medhub.access.spawn`); when
a grant ends (expires or is revoked) :mod:`medhub.access.enforce` stops every server that mounts
it. Identity is the token's user; authority is ownership by group, or the token's own
:data:`ADMIN_SCOPE` (platform admins, each such act audited as theirs), never an account flag
or anything the client sends. Every request, decision, grant, revocation, expiry and enforced
stop is an audit event (source ``access``) whose object names the dataset and the user.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
from pathlib import Path
from typing import Any

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler
from jupyterhub.utils import url_path_join
from tornado import httpclient, web
from tornado.ioloop import IOLoop, PeriodicCallback

from medlib.contract import ACCESS_SERVICE

from ..catalog import Dataset
from ..service_auth import TokenHandler, listen, send_event
from .enforce import Enforcer
from .rules import AccessError, check_reasons, check_until, parse_until
from .store import AccessStore, GrantState, RequestState

log = logging.getLogger("medhub.access")
#: The scope that lets a token act as an owner of every dataset (the platform admins' role).
ADMIN_SCOPE = "custom:medhub-access:admin"
OWNER, ADMIN = "owner", "platform-admin"


class AccessHandler(TokenHandler):
    """What every page and endpoint of the service shares: who calls, and what they may decide."""

    @property
    def store(self) -> AccessStore:
        return self.settings["store"]

    @property
    def datasets(self) -> dict[str, Dataset]:
        return self.settings["datasets"]

    def user(self) -> str:
        """The calling user; HTTPError 403 for a service's token."""
        model = self.current_user
        if model.get("kind") != "user":
            raise web.HTTPError(403, "requests and grants are made with a user's own token")
        return model["name"]

    async def authority(self, dataset: Dataset) -> str | None:
        """Whether the caller decides for ``dataset``: as one of its owners, as a platform admin
        (the token holds :data:`ADMIN_SCOPE`), or not (None)."""
        if dataset.owned_by(await self.groups_of(self.user())):
            return OWNER
        return ADMIN if ADMIN_SCOPE in self.current_user.get("scopes", ()) else None

    async def owned(self) -> set[str]:
        """The datasets the caller decides for."""
        return {d.id for d in self.datasets.values() if await self.authority(d)}

    def dataset(self, dataset_id: object) -> Dataset:
        dataset = self.datasets.get(str(dataset_id))
        if dataset is None:
            known = ", ".join(sorted(self.datasets)) or "none"
            raise web.HTTPError(404, f"no dataset {dataset_id!r} in the catalog (there are: {known})")
        return dataset

    async def must_decide(self, dataset: Dataset) -> str:
        """The caller's authority over ``dataset``; HTTPError 403 naming its owners otherwise."""
        authority = await self.authority(dataset)
        if authority is None:
            raise web.HTTPError(403, f"you do not own {dataset.id!r}: its owners are the members of "
                                     f"{', '.join(dataset.owners)}; they decide")
        return authority

    async def audit(self, action: str, subject: dict[str, Any], outcome: str = "success", **details: Any) -> None:
        """An event about ``subject`` (a request or a grant): the caller acted, on its user's access."""
        object_ = {"dataset": subject["dataset"], "user": subject["user"]}
        object_["grant" if "approver" in subject else "request"] = subject["id"]
        event = {"action": action, "actor": {"user": self.current_user["name"], "groups": []}, "outcome": outcome,
                 "object": object_, "details": details}
        await send_event(self.settings["audit_url"], self.hub_auth.api_token, event)

    def refuse_bad(self, error: AccessError) -> web.HTTPError:
        return web.HTTPError(400, str(error))

    # --- what users and owners do (the API and the page call these) ---------------------------
    async def ask(self, body: dict[str, Any]) -> dict[str, Any]:
        """A new request of the caller."""
        user = self.user()
        dataset = self.dataset(body.get("dataset", ""))
        try:
            purpose, approval = check_reasons(body.get("purpose"), body.get("approval"))
            until = check_until(parse_until(body.get("until", "")), dataset)
        except AccessError as e:
            raise self.refuse_bad(e) from None
        groups = await self.groups_of(user)
        standing = sorted(set(groups) & set(dataset.readers()))
        if standing:
            raise web.HTTPError(409, f"you may read {dataset.id!r} already, as a member of {', '.join(standing)}")
        if any(g["dataset"] == dataset.id and g["state"] == GrantState.ACTIVE for g in self.store.grants(user=user)):
            raise web.HTTPError(409, f"you hold an active grant of {dataset.id!r}; ask again when it nears its end")
        if self.store.requests(user=user, datasets={dataset.id}, states=(RequestState.PENDING,)):
            raise web.HTTPError(409, f"you have a pending request for {dataset.id!r}; wait for its owners, or "
                                     "withdraw it first")
        request = self.store.add_request(user, dataset.id, purpose, approval, until)
        await self.audit("access-request", request, purpose=purpose, approval=approval, until=request["until"])
        return request

    async def pending(self, request_id: str) -> tuple[dict[str, Any], Dataset]:
        request = self.store.request(request_id)
        if request is None:
            raise web.HTTPError(404, f"no request {request_id}")
        if request["state"] != RequestState.PENDING:
            raise web.HTTPError(409, f"request {request_id} is {request['state']} already")
        return request, self.datasets.get(request["dataset"]) or self.dataset(request["dataset"])

    async def approve(self, request_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Approve a pending request (for as long as it asked, or less): the new grant."""
        request, dataset = await self.pending(request_id)
        authority = await self.must_decide(dataset)
        approver = self.user()
        if approver == request["user"] and not self.settings["self_approval"]:
            raise web.HTTPError(403, f"you asked for {dataset.id!r} yourself: another of its owners (members of "
                                     f"{', '.join(dataset.owners)}) decides (access.self_approval is off)")
        asked = parse_until(request["until"])
        try:
            until = parse_until(body["until"]) if body.get("until") else asked
            if until > asked:
                raise AccessError("until: an approval may shorten a request, never extend it; the user asks again")
            check_until(until, dataset)
        except AccessError as e:
            raise self.refuse_bad(e) from None
        grant = self.store.add_grant(request["user"], dataset.id, request["purpose"], request["approval"], approver,
                                     until, request=request_id)
        reason = str(body.get("reason") or "").strip()
        self.store.decide(request_id, RequestState.APPROVED, approver, reason, grant["id"])
        await self.audit("access-approve", grant, request=request_id, expires=grant["expires"],
                         purpose=grant["purpose"], approval=grant["approval"], reason=reason, authority=authority)
        return grant

    async def refuse(self, request_id: str, body: dict[str, Any]) -> dict[str, Any]:
        request, dataset = await self.pending(request_id)
        authority = await self.must_decide(dataset)
        reason = str(body.get("reason") or "").strip()
        if not reason:
            raise web.HTTPError(400, "reason: say why, so that the user can ask in a way you would approve")
        decided = self.store.decide(request_id, RequestState.REFUSED, self.user(), reason)
        await self.audit("access-refuse", decided, "denied", reason=reason, authority=authority)
        return decided

    async def withdraw(self, request_id: str) -> dict[str, Any]:
        request = self.store.request(request_id)
        if request is None or request["user"] != self.user():
            raise web.HTTPError(404, f"no request {request_id} of yours")
        request, _ = await self.pending(request_id)
        decided = self.store.decide(request_id, RequestState.WITHDRAWN, self.user(), "withdrawn by its user")
        await self.audit("access-withdraw", decided)
        return decided

    async def give(self, body: dict[str, Any]) -> dict[str, Any]:
        """An owner's grant without a request."""
        dataset = self.dataset(body.get("dataset", ""))
        authority = await self.must_decide(dataset)
        user = str(body.get("user", ""))
        try:
            groups = await self.groups_of(user) if user else None
        except httpclient.HTTPClientError:
            groups = None
        if groups is None:
            raise web.HTTPError(404, f"user: no hub user {user!r} (a user appears once they have logged in)")
        standing = sorted(set(groups) & set(dataset.readers()))
        if standing:
            raise web.HTTPError(409, f"{user} may read {dataset.id!r} already, as a member of {', '.join(standing)}")
        try:
            purpose, approval = check_reasons(body.get("purpose"), body.get("approval"))
            until = check_until(parse_until(body.get("until", "")), dataset)
        except AccessError as e:
            raise self.refuse_bad(e) from None
        if user == self.user() and not self.settings["self_approval"]:
            raise web.HTTPError(403, "you may not grant yourself (access.self_approval is off): another owner does")
        grant = self.store.add_grant(user, dataset.id, purpose, approval, self.user(), until)
        await self.audit("access-grant", grant, expires=grant["expires"], purpose=purpose, approval=approval,
                         authority=authority)
        return grant

    async def revoke(self, grant_id: str, body: dict[str, Any]) -> dict[str, Any]:
        grant = self.store.grant(grant_id)
        if grant is None:
            raise web.HTTPError(404, f"no grant {grant_id}")
        authority = await self.must_decide(self.dataset(grant["dataset"]))
        if grant["state"] != GrantState.ACTIVE:
            raise web.HTTPError(409, f"grant {grant_id} is {grant['state']} already")
        reason = str(body.get("reason") or "").strip()
        if not reason:
            raise web.HTTPError(400, "reason: say why the grant ends early; its user is told")
        revoked = self.store.revoke(grant_id, self.user(), reason)
        await self.audit("grant-revoke", revoked, reason=reason, authority=authority)
        IOLoop.current().spawn_callback(self.settings["enforcer"].run)  # its servers stop now, not at the next round
        return revoked

    async def listing(self, kind: str) -> list[dict[str, Any]]:
        """The caller's requests or grants (``kind``), or with ``?role=owner`` those of the datasets
        they decide for."""
        if self.get_argument("role", "") == "owner":
            owned = await self.owned()
            found = getattr(self.store, kind)(datasets=owned)
        else:
            found = getattr(self.store, kind)(user=self.user())
        states = tuple(s for s in self.get_argument("state", "").split(",") if s)
        return [item for item in found if not states or item["state"] in states]


class RequestsHandler(AccessHandler):
    async def get(self) -> None:
        self.finish({"requests": await self.listing("requests")})

    async def post(self) -> None:
        request = await self.ask(self.body())
        self.set_status(201)
        self.finish(request)


class RequestHandler(AccessHandler):
    async def get(self, request_id: str) -> None:
        request = self.store.request(request_id)
        if request is None or (request["user"] != self.user() and
                               request["dataset"] not in await self.owned()):
            raise web.HTTPError(404, f"no request {request_id} of yours or of a dataset you own")
        self.finish(request)

    async def post(self, request_id: str, verb: str) -> None:
        body = self.body()
        if verb == "approve":
            self.set_status(201)
            self.finish(await self.approve(request_id, body))
        elif verb == "refuse":
            self.finish(await self.refuse(request_id, body))
        else:
            self.finish(await self.withdraw(request_id))


class GrantsHandler(AccessHandler):
    async def get(self) -> None:
        self.finish({"grants": await self.listing("grants")})

    async def post(self) -> None:
        grant = await self.give(self.body())
        self.set_status(201)
        self.finish(grant)


class RevokeHandler(AccessHandler):
    async def post(self, grant_id: str) -> None:
        self.finish(await self.revoke(grant_id, self.body()))


def make_app(store: AccessStore, config: dict[str, Any], prefix: str = "/") -> web.Application:
    from .pages import PageHandler

    hub_auth = HubOAuth(cache_max_age=5)
    datasets = {d["id"]: Dataset.from_dict(d) for d in config["datasets"]}
    settings = {
        "hub_auth": hub_auth,
        "cookie_secret": secrets.token_bytes(32),  # the page's OAuth sessions: signing in again after a restart is fine
        "hub_scopes": {f"access:services!service={os.environ.get('JUPYTERHUB_SERVICE_NAME', ACCESS_SERVICE)}"},
        "groups_cache": {},
        "store": store,
        "datasets": datasets,
        "self_approval": config["self_approval"],
        "audit_url": config.get("audit_url"),
        "enforcer": Enforcer(store, hub_auth, config.get("audit_url")),
    }
    request, grant = r"([0-9a-f]{12})", r"([0-9a-f]{12})"
    return web.Application([
        (prefix, PageHandler),
        (url_path_join(prefix, "oauth_callback"), HubOAuthCallbackHandler),
        (url_path_join(prefix, "requests"), RequestsHandler),
        (url_path_join(prefix, "requests", request), RequestHandler),
        (url_path_join(prefix, "requests", request, "(approve|refuse|withdraw)"), RequestHandler),
        (url_path_join(prefix, "grants"), GrantsHandler),
        (url_path_join(prefix, "grants", grant, "revoke"), RevokeHandler),
    ], **settings)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(asctime)s %(name)s] %(message)s")
    env = os.environ
    config = json.loads(Path(env["MEDHUB_ACCESS_CONFIG"]).read_text())
    app = make_app(AccessStore(config["store"]), config, prefix=env.get("JUPYTERHUB_SERVICE_PREFIX", "/"))
    listen(app)
    enforcer = app.settings["enforcer"]
    PeriodicCallback(enforcer.run, config["enforce_seconds"] * 1000).start()
    log.info("medhub access service on %s; ended grants looked for every %s s", env["JUPYTERHUB_SERVICE_URL"],
             config["enforce_seconds"])
    loop = IOLoop.current()
    loop.spawn_callback(enforcer.run)
    signal.signal(signal.SIGTERM, lambda *_: loop.add_callback_from_signal(loop.stop))
    loop.start()


if __name__ == "__main__":
    main()
