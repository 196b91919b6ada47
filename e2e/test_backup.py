"""`otpd backup FILE`: a consistent copy of the SQLite database, taken while otpd serves, that a
new server (given the same server key) runs on with every account and live code."""

import json
import shutil
import sqlite3
import subprocess

import pytest
import requests

from conftest import BACKEND, BIN, POSTGRES, Otpd, SendLoad, wait_for

pytestmark = pytest.mark.skipif(BACKEND == "postgres", reason="backs up the SQLite database")

TEXT = "Code ${verify_code}"


def amm_check(server, account, verify_id, code):
    answer = server.amm(account).get(
        f"{server.url}/sms/v2/verify/check", params={"verify_id": verify_id, "verify_code": code}
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["verify_status"]


def test_a_backup_taken_while_serving_runs_a_new_server(tmp_path):
    first = Otpd(tmp_path / "first")
    (tmp_path / "first").mkdir()
    first.start()
    try:
        account = first.create_account("shop", credits=20)
        verify_id, _ = first.amm_send(account, "393481230001")
        code = first.last_code("+393481230001")
        backup = tmp_path / "otpd-backup.db"
        printed = json.loads(first.cli("backup", str(backup)).stdout)
        assert printed["backup"] == str(backup)
        assert printed["bytes"] == backup.stat().st_size > 0
        assert printed["server_key_file"] == str(tmp_path / "first" / "server.key")
        assert not (tmp_path / "otpd-backup.db.partial").exists()
        # The original goes on serving; what it does now is not in the copy.
        assert amm_check(first, account, verify_id, code) == "VERIFIED"
    finally:
        first.stop()

    restored = tmp_path / "restored"
    restored.mkdir()
    shutil.copy(backup, restored / "otpd.db")
    shutil.copy(tmp_path / "first" / "server.key", restored / "server.key")
    second = Otpd(restored)
    second.start()
    try:
        assert second.account_info(account["access_key_id"])["credits"] == 19
        # The code was live when the copy was taken, and its secret opens with the same key.
        assert amm_check(second, account, verify_id, code) == "VERIFIED"
        assert requests.get(f"{second.url}/readyz", timeout=10).status_code == 200
    finally:
        second.stop()


def test_a_backup_under_load_is_whole_and_holds_every_send_answered_before_it(tmp_path):
    server = Otpd(tmp_path)
    server.start()
    load = None
    try:
        load = SendLoad(server, server.create_account("busy"))
        wait_for(lambda: len(load.accepted) >= 200)
        answered_before = list(load.accepted)
        backup = tmp_path / "under-load.db"
        server.cli("backup", str(backup))
        wait_for(lambda: len(load.accepted) >= len(answered_before) + 200)
    finally:
        if load:
            load.stop()
        server.stop()
    assert not load.refused, load.refused
    copy = sqlite3.connect(backup)
    try:
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = {row[0] for row in copy.execute("SELECT id FROM verifications")}
    finally:
        copy.close()
    assert set(answered_before) <= stored
    assert len(stored) < len(load.accepted), "sends answered after the copy are not in it"


def test_an_existing_file_is_never_overwritten(tmp_path):
    server = Otpd(tmp_path)
    server.create_account("shop")
    existing = tmp_path / "taken.db"
    existing.write_bytes(b"keep me")
    result = server.cli("backup", str(existing), check=False)
    assert result.returncode == 2
    assert "already exists" in result.stderr
    assert existing.read_bytes() == b"keep me"


@pytest.mark.parametrize(
    "data_dir, extra, file, message",
    [
        ("{tmp}/empty", [], "{tmp}/copy.db", "there is no SQLite database at"),
        ("{tmp}", [], "{tmp}/no-such-directory/copy.db", "its directory does not exist"),
        ("{tmp}", ["--database-url", POSTGRES], "{tmp}/copy.db", "back up PostgreSQL with pg_dump"),
    ],
)
def test_backups_that_cannot_be_taken_say_why(tmp_path, data_dir, extra, file, message):
    Otpd(tmp_path).create_account("shop")
    args = [arg.format(tmp=tmp_path) for arg in ["--data-dir", data_dir, *extra, "backup", file]]
    result = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr, result.stderr
    assert not (tmp_path / "copy.db").exists()


def test_a_file_that_is_no_database_fails_and_leaves_nothing(tmp_path):
    (tmp_path / "otpd.db").write_bytes(b"not a database, " * 512)
    result = subprocess.run(
        [BIN, "--data-dir", str(tmp_path), "backup", str(tmp_path / "copy.db")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1, result.stderr
    assert "cannot read the database at" in result.stderr
    assert not (tmp_path / "copy.db").exists()
    assert not (tmp_path / "copy.db.partial").exists()
