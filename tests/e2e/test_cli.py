"""The `consortium` command line as a user runs it: a subprocess per command, `--dir` always.

`consortium init` has no option for ports or protocol timers, so after `init` the test moves the
fresh consortium to leased free ports and fast timers by editing its genesis.json and configs
(what an operator would do by hand) - the default ports 7100/7200/9100 may be taken by a
developer's own consortium.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from consortium import process
from consortium.client import ConsortiumClient
from consortium.config import Genesis
from tests.e2e.conftest import (
    ACTIVE_DIRS,
    ADMIN_DSN,
    PROTOCOL,
    VALIDATORS,
    PortLease,
    drop_databases,
    lease_ports,
    print_log_tails,
    require_postgres,
)

pytestmark = pytest.mark.e2e

CLI_TIMEOUT_S = 120.0
PASSWORD = "s3cret-not-for-logs"
"""Trust auth ignores it, so the DSN works; it must never be shown."""


def consortium_bin() -> Path:
    for candidate in (Path(sys.prefix) / "bin" / "consortium",
                      Path(__file__).resolve().parents[2] / ".venv" / "bin" / "consortium"):
        if candidate.exists():
            return candidate
    pytest.skip("the consortium console script is not installed")


def cli(*args: str, timeout_s: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CONSORTIUM_DSN", "CONSORTIUM_HOME")}
    try:
        return subprocess.run([str(consortium_bin()), *args], capture_output=True, text=True,
                              timeout=timeout_s, env=env, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"consortium {' '.join(args)} did not finish in {timeout_s} s") \
            from exc


def ok_json(*args: str) -> Any:
    res = cli(*args, "--json")
    assert res.returncode == 0, f"consortium {' '.join(args)} exited {res.returncode}: " \
                                f"{res.stderr[-2000:]}"
    assert "Traceback" not in res.stderr
    return json.loads(res.stdout)


def assert_one_line_error(res: subprocess.CompletedProcess[str], *fragments: str) -> str:
    out = res.stdout + res.stderr
    assert res.returncode != 0, f"exited 0: {out[-1000:]}"
    assert "Traceback" not in out, f"a traceback instead of an error line:\n{out[-3000:]}"
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one error line, got {len(lines)}:\n{res.stderr}"
    assert lines[0].startswith("consortium: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def dsn_with_password() -> str:
    """The admin DSN with a password added (host part, port and query kept as they are)."""
    from urllib.parse import urlsplit, urlunsplit
    parts = urlsplit(ADMIN_DSN)
    if parts.password is not None:
        return ADMIN_DSN
    user = parts.username or "postgres"
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}:{PASSWORD}@{host}"))


def move_to_ports(directory: Path, lease: PortLease) -> None:
    """Rewrite a CLI-initialised consortium to the leased ports and the fast test timers."""
    gpath = directory / "genesis.json"
    genesis = json.loads(gpath.read_text())
    genesis["protocol"] = dataclasses.asdict(PROTOCOL)
    for v in genesis["validators"]:
        i = int(v["id"])
        v["peer_address"] = f"127.0.0.1:{lease.base + i}"
        v["client_address"] = f"127.0.0.1:{lease.base + 100 + i}"
        cpath = directory / "validators" / str(i) / "config.json"
        config = json.loads(cpath.read_text())
        config["listen_peer"] = v["peer_address"]
        config["listen_client"] = v["client_address"]
        config["listen_metrics"] = f"127.0.0.1:{lease.base + 200 + i}"
        cpath.write_text(json.dumps(config, indent=2) + "\n")
    gpath.write_text(json.dumps(genesis, indent=2) + "\n")


@dataclass
class Net:
    directory: Path
    genesis: Genesis

    @property
    def d(self) -> str:
        return str(self.directory)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    """`consortium init` and `consortium up --detach` (asserting their output); teardown is
    `consortium down`, then whatever it left is stopped and every database dropped."""
    require_postgres()
    directory = tmp_path_factory.mktemp("cli") / "consortium"
    lease = lease_ports(VALIDATORS)
    ACTIVE_DIRS.append(directory)
    genesis: Genesis | None = None
    try:
        info = ok_json("init", "--dir", str(directory), "--validators", str(VALIDATORS))
        assert info["validators"] == VALIDATORS and info["dir"] == str(directory)
        assert info["orgs"] == [f"org{i}" for i in range(VALIDATORS)]
        assert info["chain_id"].startswith("consortium-")
        move_to_ports(directory, lease)
        genesis = Genesis.load(directory / "genesis.json")
        assert genesis.chain_id == info["chain_id"]

        res = cli("up", "--dir", str(directory), "--detach", "--dsn", dsn_with_password(),
                  "--timeout", "60", "--no-admission", "--json")
        assert res.returncode == 0, res.stderr[-3000:]
        assert PASSWORD not in res.stdout + res.stderr
        started = json.loads(res.stdout)["validators"]
        assert sorted(s["id"] for s in started) == list(range(VALIDATORS))
        assert not any(s["already_running"] for s in started)
        yield Net(directory, genesis)
    except BaseException:
        print_log_tails(directory)
        raise
    finally:
        with contextlib.suppress(AssertionError):
            cli("down", "--dir", str(directory), timeout_s=60)
        if (directory / "genesis.json").exists():
            with contextlib.suppress(process.ProcessError):
                process.down(directory)
        if genesis is not None:
            drop_databases(process.database_name(genesis, i) for i in range(VALIDATORS))
        ACTIVE_DIRS.remove(directory)
        lease.release()


# ------------------------------------------------------------------------------------- help

@pytest.mark.parametrize("command", [
    [], ["init"], ["up"], ["status"], ["down"], ["submit"], ["submit", "provenance"],
    ["submit", "patient"], ["get"], ["validator"], ["members"], ["members", "apply"],
    ["members", "sponsor"], ["access"], ["review"], ["admission"]])
def test_help_exits_zero(command: list[str]) -> None:
    res = cli(*command, "--help", timeout_s=60)
    assert res.returncode == 0, res.stderr
    assert "Usage:" in res.stdout and "Traceback" not in res.stderr


# --------------------------------------------------------------------- a running consortium

def test_up_again_is_idempotent(net: Net) -> None:
    pids = {i: process.read_pid(net.directory / "validators" / str(i))
            for i in range(VALIDATORS)}
    started = ok_json("up", "--dir", net.d, "--detach", "--timeout", "60",
                      "--no-admission")["validators"]
    assert all(s["already_running"] for s in started), started
    assert {s["id"]: s["pid"] for s in started} == pids


def test_status_json(net: Net) -> None:
    res = cli("status", "--dir", net.d, "--json")
    assert res.returncode == 0, res.stderr
    assert PASSWORD not in res.stdout + res.stderr
    data = json.loads(res.stdout)
    rows = data["validators"]
    assert [r["id"] for r in rows] == list(range(VALIDATORS))
    for r in rows:
        missing = {"id", "org", "pid", "address", "database", "height", "view", "epoch",
                   "primary", "primary_address", "last_block_hash", "healthy", "serving",
                   "problem"} - r.keys()
        assert not missing, f"status lacks {missing}: {r}"
        assert r["org"] == f"org{r['id']}"
        assert r["healthy"] is True and isinstance(r["pid"], int)
        assert r["serving"] is True and r["problem"] is None, r
        assert r["primary"] == data["primary"]["id"]
        assert r["address"] == net.genesis.validator(r["id"]).client_address
        assert process.database_name(net.genesis, r["id"]) in r["database"]
        assert PASSWORD not in r["database"] and "***" in r["database"], r["database"]
        assert isinstance(r["height"], int) and isinstance(r["view"], int)
    primary = data["primary"]
    assert primary["address"] == net.genesis.validator(primary["id"]).client_address
    assert primary["agreeing"] == primary["answered"] == VALIDATORS
    text = cli("status", "--dir", net.d)
    assert text.returncode == 0 and PASSWORD not in text.stdout
    assert text.stdout.startswith(f"primary: validator {primary['id']} at ")
    assert text.stdout.count("serving=yes") == VALIDATORS


def test_submit_provenance_json(net: Net) -> None:
    r = ok_json("submit", "provenance", "--dir", net.d, "--as", "org0", "--product", "lot-42",
                "--event", "shipped", "--location", "Rotterdam", "--from", "org0", "--to",
                "org1", "--quantity", "12", "--document", "ab" * 32, "--readers", "org1")
    assert r["status"] == "recorded" and r["height"] >= 1
    assert len(r["record_id"]) == 64
    assert len(r["certificate_signers"]) >= 3
    assert r["proof"]["request"]["size"] >= 1 and r["proof"]["item"]["size"] == 1
    view = ok_json("get", "--dir", net.d, r["record_id"], "--decrypt", "--as", "org1")
    # the shorthand is one EPCIS ObjectEvent: the public document is the event
    assert view["subject_id"] == "urn:consortium:lot:lot-42"
    assert view["event_type"] == "shipping"
    event = view["document"]
    assert event["bizLocation"] == {"id": "urn:consortium:site:Rotterdam"}
    assert event["quantityList"] == [{"epcClass": "urn:consortium:lot:lot-42", "quantity": 12}]
    assert event["destinationList"] == [{"type": "owning_party",
                                         "destination": "urn:epc:id:pgln:4013345.00000"}]
    assert event["consortium:documents"] == ["ab" * 32]
    assert view["payload"] == {}
    assert view["readers"] == ["org1"]  # a reader receives its own wrapped key only
    assert view["verified"] is True


def test_submit_patient_and_get_as_reader_and_non_reader(net: Net, tmp_path: Path) -> None:
    payload = {"resourceType": "Observation", "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
               "subject": {"reference": "Patient/patient-7"},
               "valueQuantity": {"value": 6.1, "unit": "%",
                                 "system": "http://unitsofmeasure.org", "code": "%"}}
    f = tmp_path / "lab.json"
    f.write_text(json.dumps(payload))
    r = ok_json("submit", "patient", "--dir", net.d, "--as", "org1", "--patient", "patient-7",
                "--type", "lab-result", "--file", str(f), "--readers", "org2")
    assert r["status"] == "recorded"
    rid = r["record_id"]

    for reader in ("org1", "org2"):
        view = ok_json("get", "--dir", net.d, rid, "--decrypt", "--as", reader)
        assert view["payload"] == payload, reader
        assert view["kind"] == "patient" and view["submitter_org"] == "org1"
    public = ok_json("get", "--dir", net.d, rid)
    assert "payload" not in public and public["subject_id"] == "patient-7"

    denied = cli("get", "--dir", net.d, rid, "--decrypt", "--as", "org3")
    line = assert_one_line_error(denied, "org3")
    assert "6.1" not in denied.stdout + line


def test_bad_inputs_give_one_line_errors(net: Net, tmp_path: Path) -> None:
    good = tmp_path / "ok.json"
    good.write_text("{}")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    missing = str(tmp_path / "no-such-consortium")

    assert_one_line_error(cli("submit", "provenance", "--dir", net.d, "--as", "org9",
                              "--product", "p", "--event", "shipped"), "org9")
    assert_one_line_error(cli("submit", "patient", "--dir", net.d, "--as", "org0",
                              "--patient", "p", "--type", "encounter", "--file", str(good),
                              "--readers", "org9"), "org9")
    assert_one_line_error(cli("submit", "patient", "--dir", net.d, "--as", "org0",
                              "--patient", "p", "--type", "encounter", "--file",
                              str(bad_json)), "not FHIR: the payload is not JSON")
    assert_one_line_error(cli("submit", "patient", "--dir", net.d, "--as", "org0",
                              "--patient", "p", "--file", str(good)), "not FHIR")
    assert_one_line_error(cli("submit", "provenance", "--dir", net.d, "--as", "org0",
                              "--product", "p", "--event", "manufactured"),
                          "--location is required")
    assert_one_line_error(cli("get", "--dir", net.d, "00" * 32), "no record")
    assert_one_line_error(cli("get", "--dir", net.d, "00" * 32, "--decrypt"), "--as")
    for args in (["status"], ["down"], ["get", "00" * 32],
                 ["submit", "provenance", "--as", "org0", "--product", "p", "--event",
                  "shipped"]):
        assert_one_line_error(cli(*args, "--dir", missing))


def write_lines(path: Path, docs: list[Any]) -> Path:
    path.write_text("".join((d if isinstance(d, str) else json.dumps(d)) + "\n" for d in docs))
    return path


def height(net: Net) -> int:
    return max(r["height"] or 0 for r in ok_json("status", "--dir", net.d)["validators"])


def test_submit_file_sends_envelopes_and_reports_every_record(net: Net, tmp_path: Path) -> None:
    docs: list[Any] = [{"kind": "provenance", "product": f"lot-file-{i}", "event": "manufactured",
                        "location": "Basel", "quantity": i + 1} for i in range(300)]
    docs.insert(150, "")  # a blank line is skipped, not an error

    def hb(value: float) -> dict[str, Any]:
        return {"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
                "subject": {"reference": "Patient/patient-file"},
                "valueQuantity": {"value": value, "unit": "g/dL",
                                  "system": "http://unitsofmeasure.org", "code": "g/dL"}}
    docs += [{"patient": "patient-file", "type": "lab-result", "payload": hb(12.5 + k),
              "readers": ["org1"]} for k in range(2)]
    f = write_lines(tmp_path / "records.jsonl", docs)
    out = ok_json("submit", "--dir", net.d, "--as", "org2", "--file", str(f), "--envelope",
                  "100")
    assert (out["submitted"], out["recorded"], out["envelopes"]) == (302, 302, 4)
    assert out["invalid"] == [] and out["failed"] == [] and out["bad_lines"] == []
    ids = out["record_ids"]
    assert len(set(ids)) == 302 and all(len(i) == 64 for i in ids)
    assert 1 <= out["first_height"] <= out["last_height"]
    # Ids in file order; a record is one item of an envelope of at most 100 (one signature).
    with ConsortiumClient.from_dir(net.directory, "org2") as c:
        first, _ = c.get_receipt(ids[0])
        hundredth, _ = c.get_receipt(ids[99])
        next_one, _ = c.get_receipt(ids[100])
        assert c.get(ids[299]).subject_id == "urn:consortium:lot:lot-file-299"
    assert (first.client_id, first.nonce) == (hundredth.client_id, hundredth.nonce)
    assert first.nonce != next_one.nonce and first.item_proof.size == 100
    assert out["first_height"] <= first.height <= out["last_height"]
    view = ok_json("get", "--dir", net.d, ids[301], "--decrypt", "--as", "org1")
    assert view["payload"] == hb(13.5) and view["submitter_org"] == "org2"


def test_submit_file_with_bad_lines_submits_nothing(net: Net, tmp_path: Path) -> None:
    good = {"product": "lot-bad-file", "event": "manufactured", "location": "Basel"}
    f = write_lines(tmp_path / "mixed.jsonl", [
        good, "{oops", {"product": "lot-bad-file", "event": "shipped", "readers": ["org9"]},
        {**good, "event": "inspected"}, {"patient": "p", "type": "lab-result"}])
    before = height(net)
    res = cli("submit", "--dir", net.d, "--as", "org0", "--file", str(f))
    line = assert_one_line_error(res, "3 of 5 lines are not records, nothing submitted",
                                 "line 2: not JSON", "line 3: reader 'org9' is not a member",
                                 "line 5: missing field 'payload'")
    assert res.returncode == 2, line
    as_json = cli("submit", "--dir", net.d, "--as", "org0", "--file", str(f), "--json")
    assert as_json.returncode == 2
    assert [b["line"] for b in json.loads(as_json.stdout)["bad_lines"]] == [2, 3, 5]
    assert json.loads(as_json.stdout)["submitted"] == 0
    assert height(net) == before, "a file with bad lines committed something"

    ids_file = tmp_path / "ids.txt"
    res = cli("submit", "--dir", net.d, "--as", "org0", "--file", str(f), "--skip-invalid",
              "--ids-out", str(ids_file), "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert (out["submitted"], out["recorded"]) == (2, 2)
    assert [b["line"] for b in out["bad_lines"]] == [2, 3, 5]
    assert "record_ids" not in out and out["ids_out"] == str(ids_file)
    ids = ids_file.read_text().split()
    assert len(ids) == 2
    assert [ok_json("get", "--dir", net.d, i)["event_type"] for i in ids] == \
        ["commissioning", "inspecting"]
    assert "line 2 skipped: not JSON" in res.stderr


def test_submit_file_usage_errors_are_one_line(net: Net, tmp_path: Path) -> None:
    empty = write_lines(tmp_path / "empty.jsonl", ["", ""])
    f = write_lines(tmp_path / "one.jsonl", [{"product": "p", "event": "shipped"}])
    assert_one_line_error(cli("submit", "--dir", net.d, "--as", "org0", "--file", str(empty)),
                          "holds no records")
    assert_one_line_error(cli("submit", "--dir", net.d, "--file", str(f)), "--as ORG")
    assert_one_line_error(cli("submit", "--dir", net.d, "--as", "org9", "--file", str(f)),
                          "org9")
    assert_one_line_error(cli("submit", "--as", "org0", "provenance", "--dir", net.d,
                              "--product", "p", "--event", "shipped"),
                          "--as given before `provenance`")


def test_access_grant_revoke_erase(net: Net, tmp_path: Path) -> None:
    """`consortium access`: a reader grants another organisation, which then decrypts; the
    submitter revokes it; a non-submitter's revocation is recorded invalid (exit 1); the
    submitter erases the patient record; bad input is one line (exit 2)."""
    f = tmp_path / "enc.json"
    visit = {"resourceType": "Encounter", "status": "finished",
             "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                       "code": "AMB"}, "subject": {"reference": "Patient/P-acc"}}
    f.write_text(json.dumps(visit))
    rid = ok_json("submit", "patient", "--dir", net.d, "--as", "org1", "--patient", "P-acc",
                  "--type", "encounter", "--file", str(f), "--readers", "org2")["record_id"]
    granted = ok_json("access", "grant", "--dir", net.d, rid, "--to", "org3", "--as", "org2")
    assert granted["status"] == "recorded" and granted["reason"] == ""
    assert ok_json("get", "--dir", net.d, rid, "--decrypt", "--as", "org3")["payload"] == \
        visit
    not_submitter = cli("access", "revoke", "--dir", net.d, rid, "--org", "org3", "--as",
                        "org2", "--json")
    assert not_submitter.returncode == 1
    assert json.loads(not_submitter.stdout)["reason"] == \
        "only the submitter's organisation revokes readers"
    revoked = ok_json("access", "revoke", "--dir", net.d, rid, "--org", "org3", "--as", "org1")
    assert revoked["status"] == "recorded"
    denied = cli("get", "--dir", net.d, rid, "--decrypt", "--as", "org3")
    assert denied.returncode != 0 and "visit" not in denied.stdout
    erased = ok_json("access", "erase", "--dir", net.d, rid, "--patient", "P-acc", "--reason",
                     "patient request", "--as", "org1")
    assert erased["status"] == "recorded"
    deadline = time.monotonic() + 10  # a validator may execute the erasure a moment later
    while "erased" not in (view := ok_json("get", "--dir", net.d, rid)) and \
            time.monotonic() < deadline:
        time.sleep(0.2)
    assert view["erased"]["by_org"] == "org1" and view["erased"]["reason"] == "patient request"
    bad = cli("access", "grant", "--dir", net.d, "not-a-record-id", "--to", "org3", "--as",
              "org1")
    assert bad.returncode == 2, bad.stderr
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("consortium access: "), bad.stderr


def test_up_with_missing_genesis_dir_gives_one_line_error(tmp_path: Path) -> None:
    assert_one_line_error(cli("up", "--dir", str(tmp_path / "nothing"), "--detach", "--dsn",
                              ADMIN_DSN))


def test_init_into_an_existing_consortium_is_refused(net: Net) -> None:
    before = (net.directory / "genesis.json").read_bytes()
    assert_one_line_error(cli("init", "--dir", net.d), "--force")
    assert (net.directory / "genesis.json").read_bytes() == before


def test_init_into_an_unusable_path_gives_one_line_error(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert_one_line_error(cli("init", "--dir", str(a_file / "consortium")))


def test_up_with_unreachable_postgres_gives_one_line_error(tmp_path: Path) -> None:
    d = tmp_path / "c"
    ok_json("init", "--dir", str(d), "--validators", "1")
    lease = lease_ports(1)  # the default ports may be another consortium's (checked first)
    try:
        move_to_ports(d, lease)
        line = assert_one_line_error(cli("up", "--dir", str(d), "--detach", "--dsn",
                                         f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/"
                                         "postgres", "--timeout", "5"), "PostgreSQL")
    finally:
        lease.release()
    assert PASSWORD not in line
    assert process.read_pid(d / "validators" / "0") is None


def test_sdk_client_keeps_working_while_the_cli_submits_as_its_org(net: Net) -> None:
    """A long-running SDK client and a user's CLI submissions share one identity (org3): each
    `consortium submit` reserves a fresh block of 256 nonces, so after five of them the SDK
    client's next nonce (from its older block) is > client_nonce_window (1024) below the
    highest executed one and every validator rejects it as stale."""
    with ConsortiumClient.from_dir(net.directory, "org3") as sdk:
        sdk.submit_provenance("lot-shared", "manufactured")
        for k in range(5):
            ok_json("submit", "provenance", "--dir", net.d, "--as", "org3", "--product",
                    f"lot-shared-{k}", "--event", "inspected", "--location", "Lyon lab")
        r = sdk.submit_provenance("lot-shared", "shipped")
        assert r.status == "recorded"


def test_down_stops_every_validator(net: Net) -> None:
    """Last in this module: the fixture's consortium is stopped here. Its validators keep
    their ledgers on the server given with --dsn: `down` leaves that server running."""
    stopped = ok_json("down", "--dir", net.d)
    assert sorted(stopped["stopped"]) == list(range(VALIDATORS))
    assert stopped["embedded_postgres_pid"] is None
    rows = ok_json("status", "--dir", net.d)["validators"]
    assert all(r["pid"] is None and r["healthy"] is False for r in rows), rows
    again = ok_json("down", "--dir", net.d)
    assert again["stopped"] == []
    with psycopg.connect(ADMIN_DSN, connect_timeout=5) as conn:  # the user's server
        assert conn.execute("SELECT 1").fetchone() == (1,)


# ------------------------------------------------------------------ the embedded PostgreSQL

def postgres_processes(pgdata: Path) -> list[int]:
    """The processes of the PostgreSQL server whose data is `pgdata`: its postmaster
    (`postgres -D pgdata ...`) and the postmaster's children (checkpointer, walwriter...)."""
    procs: dict[int, tuple[list[bytes], int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        procs[int(entry.name)] = (argv, ppid)
    masters = {pid for pid, (argv, _) in procs.items()
               if argv[0].endswith(b"postgres") and str(pgdata).encode() in argv}
    return sorted(masters | {pid for pid, (_, ppid) in procs.items() if ppid in masters})


def stop_postmaster(pgdata: Path) -> None:
    """Test cleanup: stop a server that this test started and left running (by its pid)."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return
    if pid not in postgres_processes(pgdata):
        return
    os.kill(pid, signal.SIGQUIT)
    deadline = time.monotonic() + 10
    while postgres_processes(pgdata) and time.monotonic() < deadline:
        time.sleep(0.1)


@pytest.mark.parametrize("long_path", [False, True], ids=["socket-in-pgdata", "long-path"])
def test_down_stops_what_up_started_including_the_embedded_postgres(
        tmp_path: Path, long_path: bool) -> None:
    """Issue 12: `consortium down` left the embedded PostgreSQL of the directory running (one
    postgres per directory after every up/down). Now `down` stops the admission service, the
    validators and that server; a second `down` has nothing left to stop; `up` again starts
    the same server on the same data, and `down` stops it again. With a directory whose path
    is too long for a socket in DIR/pgdata the server's socket lives elsewhere: `up` still
    knows the validator's DSN for the embedded server's and starts it again."""
    directory = tmp_path / ("d" * 90 if long_path else "") / "c"
    pgdata = directory.resolve() / "pgdata"
    lease = lease_ports(1)
    try:
        ok_json("init", "--dir", str(directory), "--validators", "1")
        move_to_ports(directory, lease)
        config = directory / "admission" / "config.json"
        data = json.loads(config.read_text())
        data.update(listen=f"127.0.0.1:{lease.base + 9}", backend="rules")
        config.write_text(json.dumps(data))
        for _ in range(2):
            up = ok_json("up", "--dir", str(directory), "--detach", "--timeout", "60")
            validator = up["validators"][0]["pid"]
            admission = up["admission_pid"]
            assert isinstance(admission, int)
            postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
            running = postgres_processes(pgdata)
            assert postmaster in running and len(running) > 1, running
            # The validator keeps its ledger on that server.
            dsn = json.loads((directory / "validators" / "0" / "config.json").read_text())["dsn"]
            assert process.on_embedded_server(directory.resolve(), dsn)
            assert (str(pgdata) in dsn) is not long_path, dsn

            stopped = ok_json("down", "--dir", str(directory))
            assert postgres_processes(pgdata) == [], "the embedded PostgreSQL is still running"
            assert not (pgdata / "postmaster.pid").exists()
            assert stopped == {"stopped": [0], "admission": True,
                               "embedded_postgres_pid": postmaster}
            assert process.embedded_pid(directory) is None
            for pid in (validator, admission, postmaster):
                assert not process._pid_alive(pid), pid
            again = ok_json("down", "--dir", str(directory))
            assert again == {"stopped": [], "admission": False, "embedded_postgres_pid": None}
    finally:
        with contextlib.suppress(process.ProcessError, OSError):
            process.down(directory)
        stop_postmaster(pgdata)
        lease.release()


def test_down_leaves_a_server_in_pgdata_that_up_did_not_start(tmp_path: Path) -> None:
    """`down` stops only the server `up` started (DIR/embedded-postgres.json names its
    postmaster): one run on DIR/pgdata by someone else keeps running."""
    from consortium.process import _embedded_server

    directory = tmp_path / "c"
    ok_json("init", "--dir", str(directory), "--validators", "1")
    pgdata = directory.resolve() / "pgdata"
    pgdata.mkdir()
    try:
        server = _embedded_server(pgdata)  # started directly, not by `up`
        pid = server.get_pid()
        stopped = ok_json("down", "--dir", str(directory))
        assert stopped == {"stopped": [], "admission": False, "embedded_postgres_pid": None}
        assert pid in postgres_processes(pgdata)
        # A state naming another process (a reused pid) does not make it `up`'s either.
        (directory / process.EMBEDDED_STATE_FILE).write_text(json.dumps(
            {"socket_dir": str(pgdata), "pid": os.getpid()}))
        assert ok_json("down", "--dir", str(directory))["embedded_postgres_pid"] is None
        assert pid in postgres_processes(pgdata)
    finally:
        stop_postmaster(pgdata)
