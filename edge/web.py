"""The edge's upload page: a person at the hospital logs in and drops a folder or a zip of DICOM
files, which go into the inbox as pushes do (``source = "inbox"`` harvests take them from there).

Accounts are the edge's own (``medlib edge add-user``: scrypt hashes in ``<state>/web-users.json``,
mode 0600); sessions are signed cookies; forms carry an XSRF token. Serve it on the hospital's
network only, behind TLS.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import secrets
import threading
import zipfile
from html import escape
from io import BytesIO
from pathlib import Path

from tornado import web
from tornado.httpserver import HTTPServer

from .dicom import Inbox
from .settings import EdgeSettings

SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}
PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>medhub edge: {site}</title>
<style>body{{font-family:sans-serif;max-width:46rem;margin:2rem auto}} #drop{{border:2px dashed #888;padding:2rem;
text-align:center}} table{{border-collapse:collapse}} td,th{{padding:.2rem .6rem;border-bottom:1px solid #ddd}}</style>
</head><body><h1>medhub edge · {site}</h1>{body}</body></html>"""
LOGIN = """<form method="post" action="login">{xsrf}<p><label>User <input name="username" autofocus></label></p>
<p><label>Password <input name="password" type="password"></label></p><p><button>Log in</button></p>{error}</form>"""
UPLOAD = """<p>Logged in as {user}. Files go into this site's inbox; nothing leaves the hospital until a
harvest request from the platform takes them, by its policy.</p>
<form id="drop" method="post" action="upload" enctype="multipart/form-data">{xsrf}
<p>Choose DICOM files, a folder, or a zip of them.</p>
<p><input type="file" name="files" multiple> <input type="file" name="folder" webkitdirectory multiple></p>
<p><button>Upload</button></p></form>{result}"""


class Users:
    """The upload page's accounts."""

    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / "web-users.json"

    def _read(self) -> dict[str, str]:
        return json.loads(self.path.read_text()) if self.path.is_file() else {}

    def set(self, name: str, password: str) -> None:
        if not name or not password:
            raise ValueError("give a user name and a password")
        salt = secrets.token_bytes(16)
        digest = hashlib.scrypt(password.encode(), salt=salt, **SCRYPT)
        users = self._read() | {name: f"{salt.hex()}:{digest.hex()}"}
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(users, f)
        os.replace(tmp, self.path)

    def check(self, name: str, password: str) -> bool:
        stored = self._read().get(name)
        if not stored:
            hashlib.scrypt(password.encode(), salt=b"0" * 16, **SCRYPT)  # the same time for unknown names
            return False
        salt, digest = stored.split(":")
        return hmac.compare_digest(hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), **SCRYPT).hex(), digest)


class Base(web.RequestHandler):
    def get_current_user(self) -> str | None:
        user = self.get_signed_cookie("edge-user", max_age_days=0.5)
        return user.decode() if user else None

    def page(self, body: str) -> None:
        self.finish(PAGE.format(site=escape(self.settings["site"]), body=body))


class LoginHandler(Base):
    def get(self) -> None:
        self.page(LOGIN.format(xsrf=self.xsrf_form_html(), error=""))

    def post(self) -> None:
        name, password = self.get_argument("username", ""), self.get_argument("password", "")
        if self.settings["users"].check(name, password):
            self.set_signed_cookie("edge-user", name, expires_days=None, httponly=True, samesite="Strict")
            self.redirect(self.reverse_url("upload"))
            return
        self.set_status(403)
        self.page(LOGIN.format(xsrf=self.xsrf_form_html(), error="<p role='alert'>Wrong user name or password.</p>"))


class UploadHandler(Base):
    @web.authenticated
    def get(self) -> None:
        self.page(UPLOAD.format(user=escape(self.current_user), xsrf=self.xsrf_form_html(), result=""))

    @web.authenticated
    def post(self) -> None:
        inbox: Inbox = self.settings["inbox"]
        stored, refused = 0, []
        for field in ("files", "folder"):
            for item in self.request.files.get(field, []):
                for name, data in _members(item["filename"], item["body"], self.settings["max_bytes"]):
                    sop, reason = inbox.store(data, f"UPLOAD:{self.current_user}")
                    if sop:
                        stored += 1
                    else:
                        refused.append((name, reason))
        rows = "".join(f"<tr><td>{escape(n)}</td><td>{escape(r or '')}</td></tr>" for n, r in refused)
        result = f"<p id='result'>{stored} DICOM instance(s) stored in the inbox; {len(refused)} quarantined.</p>"
        if refused:
            result += f"<table><tr><th>file</th><th>why it was quarantined</th></tr>{rows}</table>"
        self.page(UPLOAD.format(user=escape(self.current_user), xsrf=self.xsrf_form_html(), result=result))


def _members(filename: str, data: bytes, limit: int):
    """The files of an upload: a zip's members (none larger than ``limit`` bytes unpacked: no zip
    bombs; their names are never used as paths), or the file itself."""
    if filename.lower().endswith(".zip") and zipfile.is_zipfile(BytesIO(data)):
        with zipfile.ZipFile(BytesIO(data)) as archive:
            for info in archive.infolist():
                if info.is_dir():
                    continue
                if info.file_size > limit:
                    raise web.HTTPError(413, f"{filename}: {info.filename} unpacks to {info.file_size} bytes, more "
                                             f"than [web] max_upload_mb")
                yield f"{filename}/{info.filename}", archive.read(info)
    else:
        yield filename, data


def make_app(settings: EdgeSettings, inbox: Inbox) -> web.Application:
    secret_file = settings.state_dir / "web-cookie-secret"
    if not secret_file.exists():
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return web.Application([
        web.url(r"/", UploadHandler, name="upload"),
        web.url(r"/upload", UploadHandler),
        web.url(r"/login", LoginHandler),
    ], cookie_secret=secret_file.read_text().strip(), xsrf_cookies=True, login_url="/login",
        site=settings.site, users=Users(settings.state_dir), inbox=inbox, max_bytes=settings.web.max_upload_mb << 20)


class WebServer:
    """The upload page, served from a thread of its own until :meth:`stop`."""

    def __init__(self, settings: EdgeSettings, inbox: Inbox):
        self.settings, self.inbox = settings, inbox
        self.ready, self.thread = threading.Event(), threading.Thread(target=self._serve, name="edge-web", daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopped: asyncio.Event | None = None

    def start(self) -> WebServer:
        self.thread.start()
        self.ready.wait(30)
        return self

    def _serve(self) -> None:
        async def main() -> None:
            self.loop, self.stopped = asyncio.get_running_loop(), asyncio.Event()
            server = HTTPServer(make_app(self.settings, self.inbox), max_body_size=self.settings.web.max_upload_mb << 20)
            server.listen(self.settings.web.port, address=self.settings.web.bind)
            self.ready.set()
            await self.stopped.wait()
            server.stop()
        asyncio.run(main())

    def stop(self) -> None:
        if self.loop is not None and self.stopped is not None:
            self.loop.call_soon_threadsafe(self.stopped.set)
            self.thread.join(10)
