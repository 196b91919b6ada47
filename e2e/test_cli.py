"""The command line contract: JSON on stdout, one-line errors with exit status 2."""

import json
import re
import socket
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from conftest import BACKEND, Otpd, pinpoint_send, wait_for


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


def test_a_rotated_secret_replaces_the_old_one_and_keeps_the_rest(otpd):
    account = otpd.create_account("rotating")
    app = otpd.create_app(account, "rotating-app")
    to = "+393487770001"
    pinpoint_send(otpd.pinpoint(account), app, to)
    code = otpd.last_code(to)

    rotated = json.loads(otpd.cli("accounts", "rotate-secret", account["access_key_id"]).stdout)
    assert rotated["access_key_id"] == account["access_key_id"]
    assert rotated["account_id"] == account["account_id"]
    assert rotated["secret_access_key"] != account["secret_access_key"]
    assert len(rotated["secret_access_key"]) == len(account["secret_access_key"])

    # The running server looks accounts up again within two seconds.
    old = otpd.pinpoint(account)

    def old_secret_refused():
        try:
            old.get_apps()
        except old.exceptions.ForbiddenException:
            return True
        return False

    wait_for(old_secret_refused)
    amm_old = otpd.amm(account).get(f"{otpd.url}/sms/v2/verify/search", params={"verify_id": "0" * 40})
    assert amm_old.status_code == 401

    new = otpd.pinpoint(rotated)
    assert app in [item["Id"] for item in new.get_apps()["ApplicationsResponse"]["Item"]]
    verified = new.verify_otp_message(
        ApplicationId=app,
        VerifyOTPMessageRequestParameters={"DestinationIdentity": to, "Otp": code, "ReferenceId": "login"},
    )
    assert verified["VerificationResponse"]["Valid"] is True, "a code sent before the rotation still verifies"
    amm_new = otpd.amm(rotated).get(f"{otpd.url}/sms/v2/verify/search", params={"verify_id": "0" * 40})
    assert amm_new.status_code == 400, amm_new.text


def test_a_rotation_can_keep_the_old_secret_for_a_while(otpd):
    first = otpd.create_account("graceful")
    second = json.loads(
        otpd.cli("accounts", "rotate-secret", first["access_key_id"], "--keep-old-minutes", "60").stdout
    )
    assert second["previous_secret_valid_until"] > second["created_at"]
    listed = otpd.account_info(first["access_key_id"])
    assert listed["previous_secret_valid_until"] == second["previous_secret_valid_until"]

    def search(account):
        return otpd.amm(account).get(f"{otpd.url}/sms/v2/verify/search", params={"verify_id": "0" * 40}).status_code

    # Both secrets work, in both dialects, while clients move over.
    wait_for(lambda: search(second) == 400)
    assert search(first) == 400
    otpd.pinpoint(first).get_apps()
    otpd.pinpoint(second).get_apps()

    # A rotation without --keep-old-minutes ends every older secret.
    third = json.loads(otpd.cli("accounts", "rotate-secret", first["access_key_id"]).stdout)
    assert third["previous_secret_valid_until"] is None
    wait_for(lambda: search(first) == 401 and search(second) == 401)
    assert search(third) == 400
    with pytest.raises(otpd.pinpoint(first).exceptions.ForbiddenException):
        otpd.pinpoint(first).get_apps()


def test_bad_arguments_exit_with_2_and_one_line(otpd):
    for args in [
        ("apps", "create", "--account", "nope", "x"),
        ("apps", "create", "--account", "OTPDAAAAAAAAAAAAAAAA", "x"),
        ("accounts", "create", ""),
        ("accounts", "create", "x", "--credits", "-1"),
        ("accounts", "create", "x", "--sender", "Way too long sender"),
        ("apps", "delete", "zzz"),
        ("credits", "add", "OTPDAAAAAAAAAAAAAAAA", "3"),
        ("accounts", "rotate-secret", "OTPDAAAAAAAAAAAAAAAA"),
        ("accounts", "rotate-secret", "nope"),
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
    for minutes in ["0", "99999"]:
        grace = otpd.cli("accounts", "rotate-secret", "OTPDAAAAAAAAAAAAAAAA", "--keep-old-minutes", minutes, check=False)
        assert grace.returncode == 2
        assert grace.stderr.startswith(f"error: invalid value '{minutes}' for '--keep-old-minutes")
    no_threads = otpd.cli("serve", "--worker-threads", "0", check=False)
    assert no_threads.returncode == 2
    assert no_threads.stderr.startswith("error: invalid value '0' for '--worker-threads")


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


@pytest.mark.skipif(BACKEND != "sqlite", reason="the SQLite database's own files")
def test_a_stopped_server_and_each_command_leave_the_sqlite_database_as_one_file(tmp_path):
    """SQLite keeps recent commits in a write-ahead log beside the database while it runs; a
    clean stop copies them in and removes it, so that the database file alone is whole."""
    def files():
        """The database and its log's two files (not the serve lock's file)."""
        return sorted(path.name for path in tmp_path.iterdir()
                      if path.name in ("otpd.db", "otpd.db-shm", "otpd.db-wal"))

    server = Otpd(tmp_path)
    server.start()
    try:
        account = server.create_account("one-file")
        assert files() == ["otpd.db", "otpd.db-shm", "otpd.db-wal"]
        pinpoint, app = server.pinpoint(account), server.create_app(account)
        sent = pinpoint.send_otp_message(
            ApplicationId=app,
            SendOTPMessageRequestParameters={"Channel": "SMS", "BrandName": "Acme", "OriginationIdentity": "Acme",
                                             "DestinationIdentity": "+393480000011", "ReferenceId": "one-file"},
        )
        assert sent["MessageResponse"]["Result"]["+393480000011"]["DeliveryStatus"] == "SUCCESSFUL"
    finally:
        server.stop()
    assert server.process.returncode == 0
    assert "otpd stopped" in server.logs()
    assert files() == ["otpd.db"]
    # An admin command run on the stopped server's database closes it the same way, and the
    # database alone holds what the server wrote.
    listed = json.loads(server.cli("accounts", "list").stdout)
    assert [a["access_key_id"] for a in listed] == [account["access_key_id"]]
    assert files() == ["otpd.db"]
    refused = server.cli("apps", "create", "--account", "OTPDNOSUCHKEY0000000", "x", check=False)
    assert refused.returncode == 2, refused.stderr
    assert files() == ["otpd.db"]
    # So does a server that opened the database but could not listen.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = "127.0.0.1:%d" % taken.getsockname()[1]
        failed = server.cli("serve", "--listen", address, check=False)
    assert failed.returncode == 1, failed.stderr
    assert f"cannot listen on {address}" in failed.stderr, failed.stderr
    assert files() == ["otpd.db"]


def pool_workers(server):
    """The threads of tokio's work-stealing pool in the server's process."""
    tasks = Path(f"/proc/{server.process.pid}/task").iterdir()
    return sum((task / "comm").read_text().strip() == "tokio-rt-worker" for task in tasks)


@contextmanager
def serving_with_worker_threads(tmp_path, threads):
    """A server of its own, told by its environment to serve on `threads` worker threads."""
    server = Otpd(tmp_path)
    server.env["OTPD_WORKER_THREADS"] = str(threads)
    server.start()
    try:
        assert re.search(rf"listening on .* worker_threads={threads}\b", server.logs())
        yield server
    finally:
        server.stop()


def test_one_worker_thread_serves_both_apis_on_the_single_threaded_scheduler(tmp_path):
    with serving_with_worker_threads(tmp_path, 1) as server:
        assert pool_workers(server) == 0
        account = server.create_account("one-thread")
        pinpoint, app = server.pinpoint(account), server.create_app(account)
        to = "+393480000001"
        sent = pinpoint.send_otp_message(
            ApplicationId=app,
            SendOTPMessageRequestParameters={
                "Channel": "SMS", "BrandName": "Acme", "OriginationIdentity": "+12065550100",
                "DestinationIdentity": to, "ReferenceId": "login",
            },
        )
        assert sent["MessageResponse"]["Result"][to]["DeliveryStatus"] == "SUCCESSFUL"
        verified = pinpoint.verify_otp_message(
            ApplicationId=app,
            VerifyOTPMessageRequestParameters={
                "DestinationIdentity": to, "Otp": server.last_code(to), "ReferenceId": "login",
            },
        )
        assert verified["VerificationResponse"]["Valid"] is True

        verify_id, _ = server.amm_send(account, "393480000002")
        code = server.last_code("+393480000002")
        checked = server.amm(account).get(
            f"{server.url}/sms/v2/verify/check", params={"verify_id": verify_id, "verify_code": code}
        )
        assert checked.json()["verify_status"] == "VERIFIED", checked.text


def test_several_worker_threads_make_a_pool_of_that_many(tmp_path):
    with serving_with_worker_threads(tmp_path, 3) as server:
        assert pool_workers(server) == 3
        assert requests.get(f"{server.url}/readyz", timeout=5).status_code == 200


@contextmanager
def serving_to_the_console(tmp_path, log_format):
    """A server printing SMS to the console: its standard error, kept in its log file."""
    server = Otpd(tmp_path, sms="console")
    server.env["OTPD_LOG_FORMAT"] = log_format
    server.start()
    try:
        yield server
    finally:
        server.stop()


def amm_send_and_check(server, to, printed_code):
    """An amm send to `to`, checked with the code that `printed_code(amm, verify_id)` reads off
    the console."""
    amm = server.amm(server.create_account(f"console-{to}"))
    sent = amm.post(f"{server.url}/sms/v2/verify/send", data={"to": to, "text": "Code ${verify_code}"})
    assert sent.status_code == 200, sent.text
    verify_id = sent.json()["verify_id"]
    checked = amm.get(f"{server.url}/sms/v2/verify/check",
                      params={"verify_id": verify_id, "verify_code": printed_code(amm, verify_id)})
    assert checked.json()["verify_status"] == "VERIFIED", checked.text


def test_the_console_sink_prints_the_code_for_a_developer(tmp_path):
    def printed_code(amm, verify_id):
        line = wait_for(lambda: re.search(r"^SMS (\S+) to \+393480000003 from \S+ \(GSM7, 1 part\(s\)\): Code (\d+)$",
                                          server.logs(), re.MULTILINE))
        return line.group(2)

    with serving_to_the_console(tmp_path, "text") as server:
        assert re.search(r"WARN otpd::startup: SMS are printed on standard error, codes and phone numbers "
                         r"included, and reach no phone: for development only", server.logs()), server.logs()
        amm_send_and_check(server, "393480000003", printed_code)


def test_with_json_logs_every_line_on_standard_error_is_json_the_sms_included(tmp_path):
    def printed():
        written = server.logs()
        complete = written[: written.rfind("\n") + 1]  # a line may be on its way
        lines = [json.loads(line) for line in complete.splitlines()]
        return [line["sms"] for line in lines if "sms" in line]

    def printed_code(amm, verify_id):
        [sms] = wait_for(printed)
        assert sms["to"] == "+393480000004"
        assert sms["encoding"] == "GSM7" and sms["parts"] == 1
        found = amm.get(f"{server.url}/sms/v2/verify/search", params={"verify_id": verify_id})
        assert found.json()["id_sms"] == sms["message_id"], found.text
        return re.fullmatch(r"Code (\d+)", sms["text"]).group(1)

    with serving_to_the_console(tmp_path, "json") as server:
        amm_send_and_check(server, "393480000004", printed_code)
    # The log lines around it (start, the request, stop) are JSON objects too, and every line,
    # the SMS's included, is dated the same way.
    lines = [json.loads(line) for line in server.logs().splitlines()]
    assert any("sms" in line for line in lines), lines
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", line["timestamp"]) for line in lines), lines
    warnings = [line["message"] for line in lines if line.get("level") == "WARN"]
    assert any(message.startswith("SMS are printed on standard error") for message in warnings), lines
    assert any("listening on" in line.get("message", "") for line in lines), lines
    assert any(line.get("message") == "otpd stopped" for line in lines), lines


def test_a_server_whose_sms_reach_no_phone_says_so_at_start(otpd):
    """The end-to-end servers write SMS to a file, codes included: fine for tests, a leak in
    production, so the start-up log warns (a provider's URL gives no warning: test_metrics)."""
    assert re.search(rf"WARN otpd::startup: SMS are written to a file, codes and phone numbers included, "
                     rf"and reach no phone: .* path={re.escape(str(otpd.sms_file))}", otpd.logs()), otpd.logs()
