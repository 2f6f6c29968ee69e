"""The red team: what an ordinary user, with code execution in her own server and her persistent
home, tries in order to act as someone else. One test per attack (issue 15); each failed on the
main branch before its fix. eve is the attacker, victor the user she attacks; real IdP, hub,
proxy, services and servers on 127.0.0.1."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from medhub.batch.client import BatchClient
from test_batch import notebook

#: A server configuration eve plants in her home: it records the headers of every request her
#: servers receive (JupyterHub reads ~/.jupyter unless user configuration is disabled).
HEADER_RECORDER = """
import json, os
def _record(handler):
    with open(os.path.expanduser("~/captured.jsonl"), "a") as f:
        f.write(json.dumps({"path": handler.request.path,
                            "authorization": handler.request.headers.get("Authorization")}) + "\\n")
c.ServerApp.tornado_settings = {"log_function": _record}
"""


def as_(token: str, method: str, url: str, **kwargs) -> httpx.Response:
    return httpx.request(method, url, headers={"Authorization": f"token {token}"}, timeout=30, **kwargs)


@pytest.fixture(scope="module")
def eve(platform):
    """eve logged in (victor too: he exists in the hub), with a token of her own."""
    for name in ("eve", "victor"):
        assert platform.login(platform.browser(), name).status_code == 200
    token = platform.api("POST", "/users/eve/tokens", json={"note": "red team"}).json()["token"]
    return token


def test_what_a_batch_job_sends_to_its_server_is_good_for_nothing_else(platform, eve, tmp_path: Path):
    home = Path(platform.settings.local.home_root) / "eve"
    (home / ".jupyter").mkdir(parents=True, exist_ok=True)
    (home / ".jupyter" / "jupyter_server_config.py").write_text(HEADER_RECORDER)
    client = BatchClient(platform.url, eve)
    deadline = time.monotonic() + 60
    while True:  # the batch service may still be starting
        try:
            job = client.submit(notebook(tmp_path / "quick.ipynb", "print(x)"), {"x": 3})
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert client.wait(job["id"], timeout=180, every=0.5)["status"] == "succeeded"
    captured = [json.loads(line) for line in (home / "captured.jsonl").read_text().splitlines()]
    tokens = {c["authorization"].split()[-1] for c in captured
              if c["authorization"] and "/medlib/batch" in c["path"]}
    assert tokens, f"the batch service sent no token to the job's server: {captured}"
    api, audit = f"{platform.url}/hub/api", f"{platform.url}/services/medhub-audit/events"
    for token in tokens:
        assert as_(token, "POST", f"{api}/users/victor/server").status_code in (403, 404)
    assert platform.api("POST", "/users/victor/server").status_code in (201, 202)
    platform.wait_ready("victor")
    for token in tokens:
        assert as_(token, "GET", f"{api}/users/victor").status_code in (403, 404)
        assert as_(token, "GET", f"{platform.url}/user/victor/api/status").status_code == 403
        assert as_(token, "GET", audit, params={"user": "victor"}).status_code == 403
        forged = {"action": "dataset-open", "actor": {"user": "victor", "groups": []}, "object": {"dataset": "x"}}
        assert as_(token, "POST", audit, json=forged).status_code == 403
        assert as_(token, "GET", f"{api}/user").status_code == 403  # revoked when the job ended
    platform.api("DELETE", "/users/victor/server")
