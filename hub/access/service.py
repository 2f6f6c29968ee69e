"""The ``medhub-access`` hub service: users ask for datasets, their owners decide.

A user asks for a dataset with a purpose, the reference of the ethics approval or study
protocol it serves, and an end date: ``POST requests`` {dataset, purpose, approval, until}. The
dataset's owners (members of a group in its catalog entry's ``owners``) see it among
``GET requests?role=owner``, and approve it (``POST requests/<id>/approve`` {until?, reason?},
for as long as asked or less) or refuse it with a reason (``POST requests/<id>/refuse``);
its user sees the decision in ``GET requests``. An approval may also narrow a versioned dataset
to some of its versions ({versions: ["v000002"]}): the servers then mount those alone. An owner may also grant directly
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

Owners also end and widen their data's life: ``POST datasets/<id>/versions/<v>/delete``
{reason} deletes a version (its tombstone stays beside the others and in the audit log, and
every server that mounts the dataset stops), and ``POST datasets/<id>/publish`` {version, as,
title, groups | everyone, owners (default: the source's)} publishes a version that its site de-identified (or a features
table) as a new dataset, after ``medlib anonymize check`` finds nothing in it.

The output airlock: ``POST exports?name=&justification=`` (the file as the body) asks for an
output to leave. It is checked (:mod:`medhub.access.exports`), kept, and held until an owner of
every dataset that holds the user's outputs back (each dataset a server of theirs was ever
started with, of a sensitivity not in ``access.direct_download``) approves it
(``POST exports/<id>/approve`` or ``refuse`` {reason}); then its requester downloads it
(``GET exports/<id>/download``) for ``access.export_download_hours``. Reviewers see
``GET exports/<id>/preview``. An output of a user whose servers read only anonymized data is
approved at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import signal
import time
from pathlib import Path
from typing import Any

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, HubOAuthenticated
from jupyterhub.utils import url_path_join
from tornado import httpclient, web
from tornado.ioloop import IOLoop, PeriodicCallback

from medlib import versions
from medlib.anonymize.check import check_tree
from medlib.anonymize.residual import Identifiers
from medlib.contract import ACCESS_SERVICE, SLUG, SLUG_RULE, Policy, parse_time, utc_now
from medlib.manifest import MANIFEST, read_manifest, sha256

from ..catalog import Dataset
from ..service_auth import TokenHandler, listen, send_event
from .enforce import Enforcer
from .exports import identifiers_of, inspect, preview
from .rules import AccessError, check_reasons, check_until, parse_until
from .store import AccessStore, ExportState, GrantState, RequestState

log = logging.getLogger("medhub.access")
#: The scope that lets a token act as an owner of every dataset (the platform admins' role).
ADMIN_SCOPE = "custom:medhub-access:admin"
#: The delivery policies whose versions may be published beyond their owners.
PUBLISHABLE = (Policy.ANONYMIZED, Policy.FEATURES)
#: An export's name: a plain file name.
EXPORT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MB = 1 << 20
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
        return request, self.dataset(request["dataset"])

    def narrowed(self, dataset: Dataset, body: dict[str, Any]) -> list[str] | None:
        """The versions a grant is limited to (``versions`` in ``body``), each published; None: all."""
        wanted = body.get("versions")
        if not wanted:
            return None
        if not dataset.versioned:
            raise web.HTTPError(400, f"versions: {dataset.id!r} is not versioned; grant it whole")
        if not isinstance(wanted, list) or not all(isinstance(v, str) for v in wanted):
            raise web.HTTPError(400, "versions: a list of version names, such as [\"v000002\"]")
        there = versions.versions(dataset.path)
        missing = sorted(set(wanted) - set(there))
        if missing:
            raise web.HTTPError(400, f"versions: {dataset.id} has no {', '.join(missing)}; it has "
                                     f"{', '.join(there) or 'none yet'}")
        return sorted(set(wanted))

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
                                     until, request=request_id, versions=self.narrowed(dataset, body))
        reason = str(body.get("reason") or "").strip()
        self.store.decide(request_id, RequestState.APPROVED, approver, reason, grant["id"])
        await self.audit("access-approve", grant, request=request_id, expires=grant["expires"], versions=grant["versions"],
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
        grant = self.store.add_grant(user, dataset.id, purpose, approval, self.user(), until,
                                     versions=self.narrowed(dataset, body))
        await self.audit("access-grant", grant, expires=grant["expires"], versions=grant["versions"], purpose=purpose,
                         approval=approval,
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

    async def delete_version(self, dataset_id: str, version: str, body: dict[str, Any]) -> dict[str, Any]:
        """Delete a version of a dataset the caller owns: the audit event first (it carries the
        tombstone), then the tombstone and the files; every server that mounts the dataset stops."""
        dataset = self.dataset(dataset_id)
        authority = await self.must_decide(dataset)
        if not dataset.versioned:
            raise web.HTTPError(409, f"{dataset.id!r} is not versioned: its one content is removed from the catalog "
                                     "by an administrator, not deleted version by version")
        reason = str(body.get("reason") or "").strip()
        if not reason:
            raise web.HTTPError(400, "reason: say why the version is deleted (the tombstone keeps it)")
        try:
            stone = versions.tombstone(dataset.path, version, self.user(), reason, utc_now())
        except versions.VersionNotFound as e:
            raise web.HTTPError(404, f"{dataset.id}: {e}") from None
        seq = await self.event("dataset-delete", {"dataset": dataset.id, "version": version}, authority=authority,
                               **stone)
        if seq is None:
            raise web.HTTPError(503, "the audit log did not take the deletion, so nothing was deleted; try again")
        stone["audit_seq"] = seq
        await IOLoop.current().run_in_executor(None, versions.delete, dataset.path, version, stone)
        log.info("%s deleted %s of %s: %s", self.user(), version, dataset.id, reason)
        IOLoop.current().spawn_callback(self.settings["enforcer"].stop_mounting, dataset.id, f"{version} deleted")
        return stone

    async def publish(self, dataset_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Publish a de-identified version of a dataset the caller owns as a new dataset for wider
        groups (or every user), with provenance pointing at it."""
        source = self.dataset(dataset_id)
        authority = await self.must_decide(source)
        root = self.settings["publish_root"]
        if not root:
            raise web.HTTPError(409, "this deployment has no folder for published datasets that servers can mount "
                                     "(on Kubernetes, catalogue the derivative as a dataset with its own claim)")
        if not source.versioned:
            raise web.HTTPError(409, f"{source.id!r} is not versioned: only a delivered version carries the "
                                     "provenance (its policy at the site) that publication relies on")
        version, new_id = str(body.get("version", "")), str(body.get("as", ""))
        try:
            folder = versions.resolve(source.path, version or None)
        except versions.VersionNotFound as e:
            raise web.HTTPError(404, f"{source.id}: {e}") from None
        origin = json.loads((folder / versions.PROVENANCE).read_text())
        if origin.get("policy") not in PUBLISHABLE:
            raise web.HTTPError(409, f"{source.id} {folder.name} was delivered {origin.get('policy') or 'without a policy'}"
                                     f": only a version de-identified at its site (policy anonymized, with the site's "
                                     f"key) or radiomic features may be published; harvest one for that")
        if not SLUG.match(new_id) or new_id in self.datasets:
            raise web.HTTPError(400, f"as: {new_id!r} must be a new dataset id ({SLUG_RULE}), not one in the catalog")
        title = str(body.get("title") or "").strip()
        if not title:
            raise web.HTTPError(400, "title: name the published dataset")
        known = self.settings["allowed_groups"]
        groups = list(known) if body.get("everyone") else [str(g) for g in body.get("groups") or ()]
        unknown = sorted(set(groups) - set(known))
        if not groups or unknown:
            raise web.HTTPError(400, f"groups: name the groups that may read it (of {', '.join(known)}), or everyone"
                                     + (f"; no such group: {', '.join(unknown)}" if unknown else ""))
        owners = [str(g) for g in body.get("owners") or source.owners]
        unknown = sorted(set(owners) - set(known))
        if unknown:
            raise web.HTTPError(400, f"owners: no such group: {', '.join(unknown)} (of {', '.join(known)})")
        checked, findings = await IOLoop.current().run_in_executor(None, check_tree, folder)
        if findings:
            shown = "; ".join(f"{f.file}: {f.keyword or f.tag} {f.reason}" for f in findings[:5])
            raise web.HTTPError(409, f"{len(findings)} finding(s) in {checked} DICOM file(s) of {source.id} {folder.name}"
                                     f" (medlib anonymize check): {shown}; nothing was published")
        files = {name: (folder / name, digest) for name, digest in read_manifest(folder).items()
                 if name not in versions.RECORDS}
        provenance = {"derived_from": {"dataset": source.id, "version": folder.name,
                                       "manifest_sha256": sha256(folder / MANIFEST), "policy": origin.get("policy"),
                                       "site": origin.get("site")},
                      "published_by": self.user(), "published": utc_now(), "dicom_checked": checked}
        target = Path(root) / new_id
        await IOLoop.current().run_in_executor(None, lambda: versions.publish(target, files, provenance))
        dataset = Dataset(id=new_id, title=title, location=str(target), groups=tuple(groups), sensitivity="anonymized",
                          licence=source.licence, description=str(body.get("description") or ""),
                          modality=source.modality, contact=source.contact, owners=tuple(owners), versioned=True,
                          provenance=f"Published by {self.user()} from {source.id} {folder.name} (delivered "
                                     f"{origin.get('policy')} from site {origin.get('site', '?')})")
        self.store.add_published(dataset.to_dict())
        self.datasets[new_id] = dataset
        await self.event("dataset-publish", {"dataset": source.id, "version": folder.name, "published_as": new_id},
                         authority=authority, groups=groups, files=len(files), dicom_checked=checked)
        return dataset.to_dict() | {"derived_from": provenance["derived_from"]}

    # --- the output airlock ---------------------------------------------------------------------
    async def holding_back(self, user: str) -> list[Dataset]:
        """The datasets that hold ``user``'s outputs back: every one a server of theirs was ever
        started with whose sensitivity keeps downloads off (``access.direct_download``)."""
        allowed = self.settings["config"]["direct_download"]
        return [self.datasets[d] for d in self.store.ever_mounted(user)
                if d in self.datasets and self.datasets[d].sensitivity not in allowed]

    async def identifiers(self, dataset: Dataset) -> Identifiers:
        """The identifying values in the headers of every file of ``dataset`` (cached until its
        files change)."""
        files = [Path(folder) / name for folder, _, names in os.walk(dataset.path) for name in names]
        signature = (len(files), max((f.stat().st_mtime for f in files), default=0.0))
        cache = self.settings["identifiers"]
        if cache.get(dataset.id, (None,))[0] != signature:
            found = await IOLoop.current().run_in_executor(None, identifiers_of, files)
            cache[dataset.id] = (signature, found)
        return cache[dataset.id][1]

    async def export_request(self, name: str, justification: str, data: bytes) -> dict[str, Any]:
        """An output of the caller's, asked to leave: checked, kept, and held for the owners of
        each dataset that holds it back (approved at once when none does)."""
        user, config = self.user(), self.settings["config"]
        if not EXPORT_NAME.match(name):
            raise web.HTTPError(400, f"name: {name!r} is not a plain file name (letters, digits, '.', '_', '-')")
        justification = justification.strip()
        if not justification:
            raise web.HTTPError(400, "justification: say what the output is and why it must leave")
        if len(data) > config["export_max_mb"] * MB:
            raise web.HTTPError(413, f"the output is larger than access.export_max_mb ({config['export_max_mb']} MB)")
        held = await self.holding_back(user)
        found = {d.id: await self.identifiers(d) for d in held}
        inspection = inspect(name, data, found, config["small_cell_threshold"])
        export = self.store.add_export(user, name, len(data), hashlib.sha256(data).hexdigest(), justification,
                                       inspection.kind, list(inspection.flags), [d.id for d in held],
                                       time.time() + config["export_download_hours"] * 3600)
        folder = Path(config["exports_dir"]) / export["id"]
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{name}.partial"
        partial.write_bytes(data)
        os.replace(partial, folder / name)
        for dataset in held or [None]:
            await self.event("export-request", {"user": user, "export": export["id"]} |
                             ({"dataset": dataset.id} if dataset else {}), name=name, size=len(data),
                             sha256=export["sha256"], kind=inspection.kind, flags=list(inspection.flags),
                             justification=justification, state=export["state"])
        return export

    async def visible_export(self, export_id: str) -> tuple[dict[str, Any], list[str]]:
        """The export if the caller requested it or owns a dataset that holds it back, and the
        datasets of those they decide for."""
        export = self.store.export(export_id)
        if export is None:
            raise web.HTTPError(404, f"no export {export_id}")
        mine = [r["dataset"] for r in export["reviews"]
                if r["dataset"] in self.datasets and await self.authority(self.datasets[r["dataset"]])]
        if export["user"] != self.user() and not mine:
            raise web.HTTPError(404, f"no export {export_id} of yours or held back by a dataset you own")
        return export, mine

    async def review(self, export_id: str, decision: str, reason: str) -> dict[str, Any]:
        export, mine = await self.visible_export(export_id)
        if export["state"] != ExportState.PENDING:
            raise web.HTTPError(409, f"export {export_id} is {export['state']} already")
        open_ = [r["dataset"] for r in export["reviews"] if r["decision"] is None and r["dataset"] in mine]
        if not open_:
            waiting = ", ".join(r["dataset"] for r in export["reviews"] if r["decision"] is None)
            raise web.HTTPError(403, f"you decide for none of the datasets that still hold it back ({waiting}): "
                                     "their owners do")
        if export["user"] == self.user() and not self.settings["self_approval"]:
            raise web.HTTPError(403, "it is your own export: another owner of its datasets reviews it "
                                     "(access.self_approval is off)")
        reason = reason.strip()
        if decision == "refused" and not reason:
            raise web.HTTPError(400, "reason: say why, so that the user can make an output you would approve")
        hours = self.settings["config"]["export_download_hours"]
        reviewed = self.store.review(export_id, open_, decision, self.user(), reason, time.time() + hours * 3600)
        for dataset in open_:
            await self.event("export-review", {"dataset": dataset, "user": export["user"], "export": export_id},
                             "success" if decision == "approved" else "denied", decision=decision, reason=reason,
                             authority=await self.authority(self.datasets[dataset]), state=reviewed["state"])
        return reviewed

    async def event(self, action: str, object_: dict[str, Any], outcome: str = "success",
                    **details: Any) -> int | None:
        """An event of the caller's on a dataset; its sequence number in the log (None: refused)."""
        event = {"action": action, "actor": {"user": self.current_user["name"], "groups": []}, "outcome": outcome,
                 "object": object_, "details": details}
        return await send_event(self.settings["audit_url"], self.hub_auth.api_token, event)

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


class ExportsHandler(AccessHandler):
    async def get(self) -> None:
        self.finish({"exports": await self.listing("exports")})

    async def post(self) -> None:
        """The output is the body; its name and justification are query arguments."""
        export = await self.export_request(self.get_argument("name", ""), self.get_argument("justification", ""),
                                           self.request.body)
        self.set_status(201)
        self.finish(export)


class ExportHandler(AccessHandler):
    async def get(self, export_id: str) -> None:
        self.finish((await self.visible_export(export_id))[0])

    async def post(self, export_id: str, verb: str) -> None:
        body = self.body()
        self.finish(await self.review(export_id, {"approve": "approved", "refuse": "refused"}[verb],
                                      str(body.get("reason") or "")))


class TokenOrSession(HubOAuthenticated, AccessHandler):
    """A file the browser fetches with the page's session, or a client with a token (checked as
    the API checks it)."""

    async def prepare(self) -> None:
        if self.hub_auth.get_token(self, in_cookie=False):
            await AccessHandler.prepare(self)


class DownloadHandler(TokenOrSession):
    """An approved export's file, for its requester, within its window."""

    @web.authenticated
    async def get(self, export_id: str) -> None:
        export = self.store.export(export_id)
        if export is None or export["user"] != self.user():
            raise web.HTTPError(404, f"no export {export_id} of yours")
        if export["state"] != ExportState.APPROVED:
            raise web.HTTPError(409, f"export {export_id} is {export['state']}: only an approved one is downloaded")
        if parse_time(export["download_until"]).timestamp() < time.time():
            raise web.HTTPError(410, f"export {export_id} could be downloaded until {export['download_until']} UTC; "
                                     "ask for it again")
        path = Path(self.settings["config"]["exports_dir"]) / export_id / export["name"]
        await self.event("export-download", {"user": export["user"], "export": export_id}, name=export["name"],
                         sha256=export["sha256"], datasets=[r["dataset"] for r in export["reviews"]])
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-Disposition", f'attachment; filename="{export["name"]}"')
        self.finish(path.read_bytes())


class PreviewHandler(TokenOrSession):
    """What a reviewer sees of an export: an image, a table's first rows, a text's start."""

    @web.authenticated
    async def get(self, export_id: str) -> None:
        export, _ = await self.visible_export(export_id)
        data = (Path(self.settings["config"]["exports_dir"]) / export_id / export["name"]).read_bytes()
        kind, body = preview(export["name"], data)
        self.set_header("Content-Type", kind)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'")
        self.finish(body)


class DeleteHandler(AccessHandler):
    async def post(self, dataset_id: str, version: str) -> None:
        self.finish(await self.delete_version(dataset_id, version, self.body()))


class PublishHandler(AccessHandler):
    async def post(self, dataset_id: str) -> None:
        published = await self.publish(dataset_id, self.body())
        self.set_status(201)
        self.finish(published)


def make_app(store: AccessStore, config: dict[str, Any], prefix: str = "/") -> web.Application:
    from .pages import PageHandler

    hub_auth = HubOAuth(cache_max_age=5)
    datasets = {d["id"]: Dataset.from_dict(d) for d in [*config["datasets"], *store.published()]}
    settings = {
        "hub_auth": hub_auth,
        "cookie_secret": secrets.token_bytes(32),  # the page's OAuth sessions: signing in again after a restart is fine
        "hub_scopes": {f"access:services!service={os.environ.get('JUPYTERHUB_SERVICE_NAME', ACCESS_SERVICE)}"},
        "groups_cache": {},
        "store": store,
        "datasets": datasets,
        "self_approval": config["self_approval"],
        "publish_root": config.get("publish_root", ""),
        "config": config,
        "identifiers": {},  # dataset id → (its files' signature, their identifying values)
        "allowed_groups": tuple(config["allowed_groups"]),
        "audit_url": config.get("audit_url"),
        "enforcer": Enforcer(store, hub_auth, config.get("audit_url")),
    }
    request = grant = export = r"([0-9a-f]{12})"
    dataset, version = r"([a-z0-9][a-z0-9-]{0,62})", r"(v\d{6})"
    return web.Application([
        (prefix, PageHandler),
        (url_path_join(prefix, "oauth_callback"), HubOAuthCallbackHandler),
        (url_path_join(prefix, "requests"), RequestsHandler),
        (url_path_join(prefix, "requests", request), RequestHandler),
        (url_path_join(prefix, "requests", request, "(approve|refuse|withdraw)"), RequestHandler),
        (url_path_join(prefix, "grants"), GrantsHandler),
        (url_path_join(prefix, "grants", grant, "revoke"), RevokeHandler),
        (url_path_join(prefix, "datasets", dataset, "versions", version, "delete"), DeleteHandler),
        (url_path_join(prefix, "datasets", dataset, "publish"), PublishHandler),
        (url_path_join(prefix, "exports"), ExportsHandler),
        (url_path_join(prefix, "exports", export), ExportHandler),
        (url_path_join(prefix, "exports", export, "(approve|refuse)"), ExportHandler),
        (url_path_join(prefix, "exports", export, "download"), DownloadHandler),
        (url_path_join(prefix, "exports", export, "preview"), PreviewHandler),
    ], **settings)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(asctime)s %(name)s] %(message)s")
    env = os.environ
    config = json.loads(Path(env["MEDHUB_ACCESS_CONFIG"]).read_text())
    app = make_app(AccessStore(config["store"]), config, prefix=env.get("JUPYTERHUB_SERVICE_PREFIX", "/"))
    listen(app, max_body_size=config["export_max_mb"] * MB + MB)
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
