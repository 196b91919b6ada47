"""Fixtures that run the real otpd binary on a free port with a fresh data directory.

The binary comes from OTPD_BIN (the test script builds it first); every test module gets its
own server, and helpers create accounts and applications through otpd's own command line.
"""

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import boto3
import pytest
import requests
from botocore.config import Config
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
BIN = os.environ.get("OTPD_BIN", str(ROOT / "target" / "debug" / "otpd"))
# The PostgreSQL server the PostgreSQL tests make their databases on (scripts/ensure-postgres).
POSTGRES = os.environ.get("OTPD_TEST_POSTGRES_URL", "postgres://otpd:otpd@127.0.0.1:5432/postgres")
# `postgres` runs every test on PostgreSQL instead of each server's own SQLite file.
BACKEND = os.environ.get("OTPD_E2E_BACKEND", "sqlite")


def pinpoint_send(client, app_id, to, reference="login"):
    """A boto3 SendOTPMessage with the usual parameters."""
    return client.send_otp_message(
        ApplicationId=app_id,
        SendOTPMessageRequestParameters={
            "Channel": "SMS",
            "BrandName": "Acme",
            "OriginationIdentity": "+12065550100",
            "DestinationIdentity": to,
            "ReferenceId": reference,
        },
    )


def wait_for(condition, timeout=30.0):
    """Polls `condition` until it returns something true, and returns that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out waiting")


def psql(url, *sql):
    command = ["psql", "-q", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", url]
    for statement in sql:
        command += ["-c", statement]
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=30).stdout


class ScratchDatabase:
    """A fresh PostgreSQL database on the test server, dropped by `drop()`."""

    def __init__(self, prefix="e2e"):
        self.name = f"otpd_{prefix}_{secrets.token_hex(6)}"
        psql(POSTGRES, f"CREATE DATABASE {self.name}")
        parts = urlsplit(POSTGRES)
        self.url = urlunsplit(parts._replace(path=f"/{self.name}"))

    def query(self, sql):
        return psql(self.url, sql).strip()

    def drop(self):
        psql(POSTGRES, f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")


class Otpd:
    """A running otpd and the tools to talk to it.

    `database_url` and `key_file` let several nodes share one PostgreSQL database and key; with
    neither, the server gets its own SQLite file, or its own PostgreSQL database when
    OTPD_E2E_BACKEND=postgres.
    """

    def __init__(self, data_dir: Path, sms=None, database_url=None, key_file=None):
        self.data_dir = data_dir
        self.sms = sms
        self.sms_file = data_dir / "sms.jsonl"
        self.log_file = data_dir / "otpd.log"
        self.process = None
        self.url = None
        self.scratch = None
        self.env = {}
        if database_url is None and BACKEND == "postgres":
            self.scratch = ScratchDatabase()
            database_url = self.scratch.url
        self.database_url = database_url
        self.global_args = ["--data-dir", str(data_dir)]
        if database_url:
            self.global_args += ["--database-url", database_url]
        if key_file:
            self.global_args += ["--server-key-file", str(key_file)]

    def cli(self, *args, check=True, own_database=True):
        """Runs an otpd command on this server's database (or, with own_database=False, on
        whatever database `args` name)."""
        global_args = self.global_args if own_database else ["--data-dir", str(self.data_dir)]
        result = subprocess.run(
            [BIN, *global_args, *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"otpd {args} failed ({result.returncode}): {result.stderr}")
        return result

    def start(self):
        self.log = open(self.log_file, "w")
        self.process = subprocess.Popen(
            [BIN, *self.global_args, "serve", "--listen", "127.0.0.1:0",
             "--sms", self.sms or f"file:{self.sms_file}"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NO_COLOR": "1", "OTPD_LOG": "info", **self.env},
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            match = re.search(r"listening on (https?://127\.0\.0\.1:\d+)", self.log_file.read_text())
            if match:
                self.url = match.group(1)
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"otpd did not start:\n{self.log_file.read_text()}")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if self.process:
            self.log.close()
        if self.scratch:
            self.scratch.drop()
            self.scratch = None

    def kill(self):
        """kill -9: no chance to finish anything."""
        self.process.kill()
        self.process.wait(timeout=10)
        self.log.close()

    def create_account(self, name="acme", credits=None):
        args = ["accounts", "create", name]
        if credits is not None:
            args += ["--credits", str(credits)]
        return json.loads(self.cli(*args).stdout)

    def create_app(self, account, name="shop"):
        return json.loads(self.cli("apps", "create", "--account", account["access_key_id"], name).stdout)[
            "application_id"
        ]

    def pinpoint(self, account, region="eu-west-1", secret=None, verify=None):
        """A boto3 Pinpoint client; `verify` is the CA file for a server speaking HTTPS."""
        return boto3.client(
            "pinpoint",
            endpoint_url=self.url,
            verify=verify,
            region_name=region,
            aws_access_key_id=account["access_key_id"],
            aws_secret_access_key=secret or account["secret_access_key"],
            config=Config(retries={"max_attempts": 1}),
        )

    def amm(self, account):
        """A requests session speaking the amm API with the account's basic credentials."""
        session = requests.Session()
        session.auth = (account["access_key_id"], account["secret_access_key"])
        session.headers["Accept"] = "application/json"
        return session

    def amm_send(self, account, to):
        """An accepted amm send to `to`: its verify_id and message id."""
        amm = self.amm(account)
        sent = amm.post(f"{self.url}/sms/v2/verify/send", data={"to": to, "text": "Code ${verify_code}"})
        assert sent.status_code == 200, sent.text
        verify_id = sent.json()["verify_id"]
        found = amm.get(f"{self.url}/sms/v2/verify/search", params={"verify_id": verify_id})
        return verify_id, found.json()["id_sms"]

    def account_info(self, access_key_id):
        for account in json.loads(self.cli("accounts", "list").stdout):
            if account["access_key_id"] == access_key_id:
                return account
        raise AssertionError(f"no account {access_key_id}")

    def messages(self):
        if not self.sms_file.exists():
            return []
        return [json.loads(line) for line in self.sms_file.read_text().splitlines()]

    def last_code(self, to):
        """The digits of the newest message to `to`."""
        for message in reversed(self.messages()):
            if message["to"] == to:
                return re.search(r"\d{4,8}", message["text"]).group(0)
        raise AssertionError(f"no message to {to}")

    def logs(self):
        return self.log_file.read_text()

    def message_record(self, message_id):
        """`otpd messages show`: the message's whole record, without its text."""
        return json.loads(self.cli("messages", "show", message_id).stdout)

    def metric(self, name, **labels):
        """The value of the sample `name` with exactly `labels` on /metrics now (0 if absent),
        read through the reference parser."""
        text = requests.get(f"{self.url}/metrics", timeout=10).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and sample.labels == labels
        )

    def logs_through(self, request_id):
        """The log once the line of request `request_id` is in it: otpd writes its log from a
        thread of its own, a moment after it answers."""
        def written():
            logs = self.logs()
            return logs if f"request_id={request_id}" in logs else None

        return wait_for(written)

    def undelivered(self, account, verify_ids):
        """The accepted sends whose message is not (yet) in the SMS file; a send the server no
        longer knows fails the test."""
        amm = self.amm(account)
        delivered = {message["message_id"] for message in self.messages()}
        missing = []
        for verify_id in verify_ids:
            found = amm.get(f"{self.url}/sms/v2/verify/search", params={"verify_id": verify_id})
            assert found.status_code == 200, f"accepted send {verify_id} is gone: {found.text}"
            if found.json()["id_sms"] not in delivered:
                missing.append(verify_id)
        return missing


@contextlib.contextmanager
def delivering_through(data_dir, peer, database_url=None, lease_seconds=None):
    """An otpd that sends its SMS to `peer` (an `SmsGateway` or an `Smsc`), on `database_url` when
    given; both are stopped afterwards, however the block ends."""
    try:
        server = Otpd(data_dir, sms=peer.url, database_url=database_url)
        if lease_seconds is not None:
            server.env["OTPD_OUTBOX_LEASE_SECONDS"] = str(lease_seconds)
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        peer.stop()


class SendLoad:
    """Threads sending amm codes to `server` as fast as it answers, until `stop()`: what was
    accepted (verify ids) and what was refused (by status and body, or by client error)."""

    def __init__(self, server, account, threads=6, timeout=15):
        self.accepted, self.refused = [], Counter()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._send, args=(server, account, worker, timeout))
            for worker in range(1, threads + 1)
        ]
        for thread in self._threads:
            thread.start()

    def _send(self, server, account, worker, timeout):
        session = server.amm(account)
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                response = session.post(
                    f"{server.url}/sms/v2/verify/send",
                    data={"to": f"3934{worker}{n:07d}", "text": "Code ${verify_code}", "ttl": "600"},
                    timeout=timeout,
                )
            except requests.RequestException as error:
                self.refused[type(error).__name__] += 1
                continue
            if response.status_code == 200:
                self.accepted.append(response.json()["verify_id"])
            else:
                self.refused[(response.status_code, response.text)] += 1

    def stop(self):
        self._stop.set()
        for thread in self._threads:
            thread.join()


class SmsGateway:
    """An SMS provider's HTTP API on a free port: it keeps every message it is given and answers
    each, after `delay` seconds, with `status`, the extra `headers` and the JSON `answer`."""

    def __init__(self, status=200, answer=b'{"id": "carrier-1"}', delay=0.0, headers=()):
        received = self.received = []

        class Gateway(BaseHTTPRequestHandler):
            def do_POST(self):
                received.append(json.loads(self.rfile.read(int(self.headers.get("content-length", 0)))))
                time.sleep(delay)
                self.send_response(status)
                self.send_header("content-type", "application/json")
                for name, value in headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/sms"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def otpd(tmp_path_factory):
    server = Otpd(tmp_path_factory.mktemp("otpd"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def account(otpd):
    return otpd.create_account()


@pytest.fixture(scope="module")
def app_id(otpd, account):
    return otpd.create_app(account)


@pytest.fixture(scope="module")
def client(otpd, account):
    return otpd.pinpoint(account)


@pytest.fixture
def http():
    return requests.Session()


class Smsc:
    """The loopback SMSC of e2e/smsc (node-smpp), with its record and control files."""

    def __init__(self, directory: Path, system_id="otpd", password="secret"):
        self.directory = directory
        self.record_file = directory / "smsc.jsonl"
        self.control_file = directory / "control.json"
        self.control_file.write_text("{}")
        self.system_id, self.password = system_id, password
        self.process = subprocess.Popen(
            ["node", str(ROOT / "e2e" / "smsc" / "smsc.js"), system_id, password,
             str(self.record_file), str(self.control_file)],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline()
        match = re.match(r"listening (\d+)", line)
        if not match:
            raise AssertionError(f"the SMSC did not start: {line!r}")
        self.port = int(match.group(1))

    @property
    def url(self):
        return f"smpp://{self.system_id}:{self.password}@127.0.0.1:{self.port}"

    def steer(self, **change):
        control = json.loads(self.control_file.read_text() or "{}")
        control.update(change)
        self.control_file.write_text(json.dumps(control))

    def events(self, kind=None):
        if not self.record_file.exists():
            return []
        events = [json.loads(line) for line in self.record_file.read_text().splitlines()]
        return [e for e in events if kind is None or e["event"] == kind]

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)
