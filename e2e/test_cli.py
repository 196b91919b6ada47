"""The command line contract: JSON on stdout, one-line errors with exit status 2."""

import json

import pytest
import requests

from conftest import BACKEND


def test_accounts_apps_and_credits(otpd):
    created = otpd.create_account("cli-co", credits=5)
    assert set(created) >= {"account_id", "access_key_id", "secret_access_key", "credits"}
    assert created["credits"] == 5
    listed = json.loads(otpd.cli("accounts", "list").stdout)
    mine = [a for a in listed if a["access_key_id"] == created["access_key_id"]]
    assert len(mine) == 1 and "secret_access_key" not in mine[0]

    topped = json.loads(otpd.cli("credits", "add", created["access_key_id"], "7").stdout)
    assert topped["credits"] == 12
    lowered = json.loads(otpd.cli("credits", "add", created["access_key_id"], "-2").stdout)
    assert lowered["credits"] == 10

    app = otpd.create_app(created, "cli-app")
    apps = json.loads(otpd.cli("apps", "list", "--account", created["access_key_id"]).stdout)
    assert [a["application_id"] for a in apps] == [app]
    assert json.loads(otpd.cli("apps", "delete", app).stdout) == {"deleted": app}
    assert json.loads(otpd.cli("accounts", "delete", created["access_key_id"]).stdout) == {
        "deleted": created["access_key_id"]
    }


def test_bad_arguments_exit_with_2_and_one_line(otpd):
    for args in [
        ("apps", "create", "--account", "nope", "x"),
        ("apps", "create", "--account", "OTPDAAAAAAAAAAAAAAAA", "x"),
        ("accounts", "create", ""),
        ("accounts", "create", "x", "--credits", "-1"),
        ("accounts", "create", "x", "--sender", "Way too long sender"),
        ("apps", "delete", "zzz"),
        ("credits", "add", "OTPDAAAAAAAAAAAAAAAA", "3"),
        ("messages", "show", "not-a-message"),
        ("serve", "--sms", "pigeon://x"),
        ("--database-url", "mysql://x", "accounts", "list"),
    ]:
        result = otpd.cli(*args, check=False, own_database="--database-url" not in args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith("error: "), args
        assert result.stderr.strip().count("\n") == 0, (args, result.stderr)
    # clap's own usage errors lead with the one-line error, then show the usage.
    unknown = otpd.cli("frobnicate", check=False)
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("error: unrecognized subcommand 'frobnicate'")


@pytest.mark.skipif(BACKEND != "sqlite", reason="PostgreSQL nodes share their database by design")
def test_a_second_server_on_the_same_sqlite_database_is_refused(otpd):
    second = otpd.cli("serve", "--listen", "127.0.0.1:0", check=False)
    assert second.returncode == 1, second.stderr
    pid = otpd.process.pid
    assert second.stderr.startswith(
        f"error: another otpd serve (pid {pid}) is using the database {otpd.data_dir / 'otpd.db'}"
    ), second.stderr
    assert second.stderr.strip().count("\n") == 0, second.stderr
    # The first server is untouched and still answers.
    assert requests.get(f"{otpd.url}/readyz", timeout=5).status_code == 200
