"""Fixtures that run the real otpd binary on a free port with a fresh data directory.

The binary comes from OTPD_BIN (the test script builds it first); every test module gets its
own server, and helpers create accounts and applications through otpd's own command line.
"""

import json
import os
import re
import subprocess
import time
from pathlib import Path

import boto3
import pytest
import requests
from botocore.config import Config

ROOT = Path(__file__).resolve().parent.parent
BIN = os.environ.get("OTPD_BIN", str(ROOT / "target" / "debug" / "otpd"))


class Otpd:
    """A running otpd and the tools to talk to it."""

    def __init__(self, data_dir: Path, sms=None):
        self.data_dir = data_dir
        self.sms = sms
        self.sms_file = data_dir / "sms.jsonl"
        self.log_file = data_dir / "otpd.log"
        self.process = None
        self.url = None

    def cli(self, *args, check=True):
        result = subprocess.run(
            [BIN, "--data-dir", str(self.data_dir), *args],
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
            [BIN, "--data-dir", str(self.data_dir), "serve", "--listen", "127.0.0.1:0",
             "--sms", self.sms or f"file:{self.sms_file}"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NO_COLOR": "1", "OTPD_LOG": "info"},
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", self.log_file.read_text())
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

    def create_account(self, name="acme", credits=None):
        args = ["accounts", "create", name]
        if credits is not None:
            args += ["--credits", str(credits)]
        return json.loads(self.cli(*args).stdout)

    def create_app(self, account, name="shop"):
        return json.loads(self.cli("apps", "create", "--account", account["access_key_id"], name).stdout)[
            "application_id"
        ]

    def pinpoint(self, account, region="eu-west-1", secret=None):
        return boto3.client(
            "pinpoint",
            endpoint_url=self.url,
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
