"""otpd on PostgreSQL while its database goes away and comes back.

These tests run a PostgreSQL cluster of their own (initdb into a temporary directory, on a free
port), so that they can stop and start it without touching the machine's server.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests
from botocore.exceptions import ClientError

from conftest import Otpd, SendLoad, Smsc, SmsGateway, delivering_through, wait_for

PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))[-1]


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PrivateCluster:
    """initdb + pg_ctl in a temporary directory; PostgreSQL will not run as root, so when the
    tests do, the cluster runs as the `postgres` system user."""

    def __init__(self):
        self.directory = Path(tempfile.mkdtemp(prefix="otpd-pg-"))
        self.data = self.directory / "data"
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        self.run("initdb", "-D", str(self.data), "--auth=trust", "-U", "postgres", "-E", "UTF8")
        self.start()
        subprocess.run(
            ["psql", "-q", "-X", "-v", "ON_ERROR_STOP=1", self.server_url("postgres"), "-c", "CREATE DATABASE otpd"],
            check=True, capture_output=True, timeout=30,
        )

    def run(self, tool, *args):
        command = [str(PG_BIN / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def server_url(self, database="otpd"):
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def start(self):
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=on"
        self.run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.directory / "log"), "-w", "start")

    def stop(self):
        self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self):
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def cluster():
    private = PrivateCluster()
    yield private
    private.remove()


@pytest.fixture
def node(tmp_path, cluster):
    server = Otpd(tmp_path, database_url=cluster.server_url())
    server.start()
    yield server
    server.stop()


def ready(node):
    return requests.get(f"{node.url}/readyz", timeout=10).status_code


def test_errors_in_each_dialect_while_the_database_is_down_then_recovery(node, cluster):
    account = node.create_account("outage")
    app_id = node.create_app(account)
    pinpoint = node.pinpoint(account)
    amm = node.amm(account)
    assert ready(node) == 200

    cluster.stop()
    time.sleep(2.5)  # past the credential cache: every request needs the database
    started = time.monotonic()
    assert ready(node) == 503

    with pytest.raises(ClientError) as failure:
        pinpoint.send_otp_message(
            ApplicationId=app_id,
            SendOTPMessageRequestParameters={
                "Channel": "SMS", "BrandName": "Shop", "DestinationIdentity": "+393471234567",
                "OriginationIdentity": "Shop", "ReferenceId": "down",
            },
        )
    assert failure.value.response["Error"]["Code"] == "InternalServerErrorException"
    assert failure.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500

    response = amm.post(f"{node.url}/sms/v2/verify/send", data={"to": "393471234567", "text": "Code ${verify_code}"})
    assert response.status_code == 500
    assert response.json() == {"errorMsg": "GENERIC_ERROR"}
    response = amm.get(f"{node.url}/sms/v2/verify/check", params={"verify_id": "a" * 40, "verify_code": "1234"})
    assert response.status_code == 500
    metrics = requests.get(f"{node.url}/metrics", timeout=10)
    assert metrics.status_code == 200, "metrics still answer, and say the database does not"
    assert "\notpd_database_up 0\n" in metrics.text
    assert 'otpd_http_requests_total{route="/sms/v2/verify/send",status="500"} 1' in metrics.text
    assert time.monotonic() - started < 20, "answers come promptly, never a hang"
    assert "panicked" not in node.logs()

    cluster.start()
    wait_for(lambda: ready(node) == 200, timeout=15)
    to = "393471234568"
    response = amm.post(f"{node.url}/sms/v2/verify/send", data={"to": to, "text": "Code ${verify_code}"})
    assert response.status_code == 200, response.text
    verify_id = response.json()["verify_id"]
    code = node.last_code("+" + to)
    check = amm.get(f"{node.url}/sms/v2/verify/check", params={"verify_id": verify_id, "verify_code": code})
    assert check.json()["verify_status"] == "VERIFIED"
    assert "\notpd_database_up 1\n" in requests.get(f"{node.url}/metrics", timeout=10).text


def test_a_database_restart_under_load_loses_no_accepted_send(node, cluster):
    account = node.create_account("restart")
    load = SendLoad(node, account)
    time.sleep(1.5)
    cluster.stop()
    time.sleep(1)
    cluster.start()
    time.sleep(2)
    load.stop()

    assert len(load.accepted) > 20
    # Whatever was not accepted was refused in the dialect's own words, never dropped on the floor.
    assert set(load.refused) <= {(500, '{"errorMsg":"GENERIC_ERROR"}')}, load.refused
    assert sum(load.refused.values()) > 0, "the restart was felt"
    wait_for(lambda: ready(node) == 200, timeout=15)
    wait_for(lambda: not node.undelivered(account, load.accepted), timeout=30)
    assert "panicked" not in node.logs()


def stored_outcome(server, message_id):
    """The message's record once an outcome has ended its wait, else nothing."""
    record = server.message_record(message_id)
    return record["state"] != "pending" and record


def outcomes_given_up(server):
    logs = server.logs()
    return logs.count("cannot record delivery attempts") - logs.count("cannot record delivery attempts yet")


def test_an_outcome_that_ends_while_the_database_is_away_is_stored_once_it_is_back(tmp_path, cluster):
    # The provider accepts the SMS while PostgreSQL is down. Before, its outcome was dropped at
    # the first failed write, the message stayed claimed, and it was sent a second time when
    # the claim ran out.
    gateway = SmsGateway(delay=5.0)
    with delivering_through(tmp_path, gateway, cluster.server_url(), lease_seconds=20) as server:
        # The send answers "queued" after its 2 s wait for the provider, which holds its
        # answer for 5 s: the database is stopped before the answer comes.
        _, message_id = server.amm_send(server.create_account("outcome"), "393471110009")
        assert len(gateway.received) == 1
        cluster.stop()
        wait_for(lambda: "cannot record delivery attempts" in server.logs(), timeout=10)
        cluster.start()

        # Well inside the 20 s lease: nothing else could have ended the claim.
        record = wait_for(lambda: stored_outcome(server, message_id), timeout=10)
        assert (record["state"], record["attempts"]) == ("sent", 1)
        assert record["carrier_message_id"] == "carrier-1"
        time.sleep(1)
        assert len(gateway.received) == 1, "sent once"
        assert outcomes_given_up(server) == 0
        assert "panicked" not in server.logs()


def test_an_outcome_given_up_on_is_sent_again_once_and_only_once(tmp_path, cluster):
    # Outcomes are offered again for three quarters of the claim's lease, no longer: past the
    # lease another worker may have claimed the message. Given up, the message goes out once
    # more when its claim runs out, and never a third time.
    gateway = SmsGateway(delay=4.0)
    with delivering_through(tmp_path, gateway, cluster.server_url(), lease_seconds=8) as server:
        _, message_id = server.amm_send(server.create_account("given-up"), "393471110010")
        cluster.stop()
        wait_for(lambda: outcomes_given_up(server) > 0, timeout=15)
        assert len(gateway.received) == 1
        cluster.start()

        record = wait_for(lambda: stored_outcome(server, message_id), timeout=25)
        assert (record["state"], record["attempts"]) == ("sent", 2)
        time.sleep(1)
        assert len(gateway.received) == 2, "sent again once"
        assert server.metric("otpd_sms_outcomes_unrecorded_total") == 1
        assert "panicked" not in server.logs()


def test_a_receipt_that_comes_while_the_database_is_away_is_asked_for_again(tmp_path, cluster):
    # A delivery receipt otpd cannot store is answered with ESME_RX_T_APPN, a temporary error,
    # so that the SMSC delivers it again later; before, it was acknowledged and lost.
    (tmp_path / "smsc").mkdir()
    (tmp_path / "otpd").mkdir()
    smsc = Smsc(tmp_path / "smsc")
    smsc.steer(receipt_delay_ms=3000)
    with delivering_through(tmp_path / "otpd", smsc, cluster.server_url()) as server:
        _, message_id = server.amm_send(server.create_account("receipt"), "393461110011")
        wait_for(lambda: stored_outcome(server, message_id), timeout=5)
        cluster.stop()
        refused = lambda: [e for e in smsc.events("deliver_sm_resp") if e["command_status"] == 0x64]
        wait_for(refused, timeout=10)
        cluster.start()

        record = wait_for(lambda: (r := server.message_record(message_id))["receipt_state"] == "DELIVRD" and r, timeout=20)
        assert record["state"] == "sent"
        assert record["carrier_message_id"] == smsc.events("submit_sm")[0]["id"]
        statuses = [e["command_status"] for e in smsc.events("deliver_sm_resp")]
        assert statuses[-1] == 0 and set(statuses) == {0x64, 0}, statuses
        assert "panicked" not in server.logs()
