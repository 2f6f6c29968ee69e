"""The development OpenID Connect provider: a real ``oidc-provider`` process on loopback.

For the demo and the tests only; production points ``oidc.issuer`` at the institution's
identity provider. :class:`DevIdentityProvider` writes the provider's configuration
(accounts, the hub's client, signing keys kept in the state folder) and gives the command
that runs ``server.mjs`` beside this file.
"""

from __future__ import annotations

import json
import os
import shutil
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import HubConfigError, ProcessStartError

SCRIPT = Path(__file__).with_name("server.mjs")


@dataclass(frozen=True)
class Account:
    """A user of the development IdP."""

    username: str
    password: str = field(repr=False)
    name: str
    email: str
    groups: tuple[str, ...]


DEMO_ACCOUNTS = (
    Account("ada", "ada-demo", "Ada Lovelace (instructor, researcher)", "ada@hospital.example",
            ("radiology-research", "course-instructors")),
    Account("sam", "sam-demo", "Sam Student", "sam@university.example", ("course-students",)),
    Account("eve", "eve-demo", "Eve Visitor (in no allowed group)", "eve@elsewhere.example", ("visitors",)),
)


ACCOUNT_FIELDS = ("username", "password", "name", "email", "groups")


def load_accounts(path: str | os.PathLike[str]) -> tuple[Account, ...]:
    """The accounts of a TOML file: ``[[account]]`` tables of username, password, name, email
    and groups (``medhub idp --accounts``; images/single-node/accounts.toml is one)."""
    try:
        tables = tomllib.loads(Path(path).read_text()).get("account", [])
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise HubConfigError(f"{path}: cannot read the accounts ({e})") from None
    accounts = []
    for index, table in enumerate(tables):
        missing = [k for k in ACCOUNT_FIELDS if k not in table]
        unknown = sorted(set(table) - set(ACCOUNT_FIELDS))
        if missing or unknown or not isinstance(table.get("groups"), list):
            raise HubConfigError(f"{path}: account[{index}] needs exactly {', '.join(ACCOUNT_FIELDS)} (groups a list); "
                                 f"missing {missing or 'none'}, unknown {unknown or 'none'}")
        accounts.append(Account(**{**table, "groups": tuple(table["groups"])}))
    if not accounts:
        raise HubConfigError(f"{path}: no [[account]] table: add at least one account")
    return tuple(accounts)


@dataclass(frozen=True)
class Client:
    """An OIDC client registered with the development IdP (the hub)."""

    client_id: str
    client_secret: str = field(repr=False)
    redirect_uris: tuple[str, ...]
    post_logout_redirect_uris: tuple[str, ...] = ()


def node_modules() -> Path:
    """The repository's node_modules (``npm ci`` at its root), where server.mjs resolves imports."""
    return Path(__file__).resolve().parents[2] / "node_modules"


def node_tool(name: str) -> str:
    """Path of a Node.js command: the project's node_modules/.bin first, then PATH."""
    local = node_modules() / ".bin" / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise ProcessStartError(
            f"{name} not found: run `npm ci` in the repository root (or install it on PATH)"
        )
    return found


@dataclass
class DevIdentityProvider:
    """Configuration and command line of one development IdP process."""

    state_dir: Path
    port: int
    accounts: tuple[Account, ...]
    clients: tuple[Client, ...]
    host: str = "127.0.0.1"
    access_token_ttl: int = 3600
    id_token_ttl: int = 3600

    @property
    def issuer(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.state_dir / "idp-config.json"

    def write_config(self) -> Path:
        """Write the provider's JSON configuration (0600: it holds passwords and secrets)."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        cookie_file = self.state_dir / "idp-cookie-secret"
        if not cookie_file.exists():
            cookie_file.write_text(os.urandom(32).hex())
            cookie_file.chmod(0o600)
        config = {
            "issuer": self.issuer,
            "host": self.host,
            "port": self.port,
            "keys_file": str(self.state_dir / "idp-keys.json"),
            "cookie_secret": cookie_file.read_text(),
            "ttl": {"AccessToken": self.access_token_ttl, "IdToken": self.id_token_ttl},
            "accounts": [asdict(a) for a in self.accounts],
            "clients": [asdict(c) for c in self.clients],
        }
        tmp = self.config_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(config, f, indent=2)
        os.replace(tmp, self.config_file)
        return self.config_file

    def change_account(self, account: Account, pid: int) -> None:
        """Replace the account of ``account.username`` (its groups, say) in the running provider
        ``pid``: the configuration is rewritten and the provider reads it again (SIGHUP)."""
        import signal

        self.accounts = tuple(account if a.username == account.username else a for a in self.accounts)
        self.write_config()
        os.kill(pid, signal.SIGHUP)

    def command(self) -> list[str]:
        node = shutil.which("node")
        if not node:
            raise ProcessStartError("node not found: install Node.js 20 or newer")
        if not (node_modules() / "oidc-provider").is_dir():
            raise ProcessStartError(
                f"oidc-provider is not installed in {node_modules()}: run `npm ci` in the repository root"
            )
        return [node, str(SCRIPT), str(self.config_file)]

    @property
    def ready_url(self) -> str:
        return self.issuer + "/.well-known/openid-configuration"
