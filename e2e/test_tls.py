"""otpd serving HTTPS itself (--tls-cert-file, --tls-key-file), with the test certificate of e2e/tls."""

import shutil
import signal
import socket
import ssl
import subprocess
import time

import pytest
import requests

from conftest import BIN, ROOT, Otpd, pinpoint_send, wait_for

TLS = ROOT / "e2e" / "tls"
CERT = str(TLS / "localhost.crt")
KEY = str(TLS / "localhost.key")
TIMEOUT = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Otpd(tmp_path_factory.mktemp("otpd-tls"))
    server.env = {
        "OTPD_TLS_CERT_FILE": CERT,
        "OTPD_TLS_KEY_FILE": KEY,
        "OTPD_CLIENT_TIMEOUT_SECONDS": str(TIMEOUT),
    }
    server.start()
    yield server
    server.stop()


def address(server):
    host, port = server.url.removeprefix("https://").split(":")
    return host, int(port)


def test_the_log_names_an_https_address(server):
    assert server.url.startswith("https://127.0.0.1:")
    assert "web console at https://127.0.0.1:" in server.logs()


def test_boto3_sends_and_verifies_over_https(server):
    account = server.create_account("tls")
    app = server.create_app(account)
    client = server.pinpoint(account, verify=CERT)
    to = "+393485550001"
    sent = pinpoint_send(client, app, to, reference="tls")
    assert sent["MessageResponse"]["Result"][to]["DeliveryStatus"] == "SUCCESSFUL"
    verified = client.verify_otp_message(
        ApplicationId=app,
        VerifyOTPMessageRequestParameters={"DestinationIdentity": to, "Otp": server.last_code(to), "ReferenceId": "tls"},
    )
    assert verified["VerificationResponse"]["Valid"] is True


def test_amm_over_https_with_curl(server):
    account = server.create_account("tls-amm")
    sent = subprocess.run(
        ["curl", "-sS", "--cacert", CERT, "-u", f"{account['access_key_id']}:{account['secret_access_key']}",
         "-d", "to=393485550002", "--data-urlencode", "text=Code ${verify_code}",
         f"{server.url}/sms/v2/verify/send"],
        capture_output=True, text=True, timeout=30,
    )
    assert sent.returncode == 0, sent.stderr
    assert '"verify_id"' in sent.stdout


def test_a_client_that_does_not_trust_the_certificate_is_refused(server):
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{server.url}/healthz", timeout=10)


def test_the_handshake_offers_tls_1_3_and_http_1_1(server):
    context = ssl.create_default_context(cafile=CERT)
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(address(server), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() == "TLSv1.3"
            assert tls.selected_alpn_protocol() == "http/1.1"


def test_plain_http_on_the_https_port_is_told_to_use_https(server):
    host, port = address(server)
    answer = requests.get(f"http://{host}:{port}/healthz", timeout=10)
    assert answer.status_code == 400
    assert answer.text == "This port speaks HTTPS: use an https:// URL\n"
    assert answer.headers["connection"] == "close"


def test_a_client_that_never_starts_its_handshake_is_cut_off(server):
    started = time.monotonic()
    with socket.create_connection(address(server), timeout=TIMEOUT + 10) as raw:
        assert raw.recv(4096) == b""
    waited = time.monotonic() - started
    assert TIMEOUT * 0.8 <= waited < TIMEOUT + 4
    metrics = requests.get(f"{server.url}/metrics", timeout=10, verify=CERT).text
    failed = next(
        float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("otpd_tls_handshakes_failed_total ")
    )
    assert failed >= 1


def serve_once(tmp_path, *args):
    return subprocess.run(
        [BIN, "--data-dir", str(tmp_path), "serve", "--listen", "127.0.0.1:0", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_certificate_without_its_key_is_a_usage_error(tmp_path):
    result = serve_once(tmp_path, "--tls-cert-file", CERT)
    assert result.returncode == 2
    assert "--tls-key-file" in result.stderr


def test_a_key_that_is_not_the_certificates_is_refused_at_start(tmp_path):
    result = serve_once(tmp_path, "--tls-cert-file", CERT, "--tls-key-file", str(TLS / "other.key"))
    assert result.returncode == 2
    assert "cannot be used together" in result.stderr


def test_a_missing_certificate_file_is_named_at_start(tmp_path):
    result = serve_once(tmp_path, "--tls-cert-file", str(tmp_path / "none.crt"), "--tls-key-file", KEY)
    assert result.returncode == 2
    assert "none.crt" in result.stderr


def served_certificate(server):
    """The certificate a new connection is served, as DER, whoever signed it."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(address(server), timeout=10) as raw:
        with context.wrap_socket(raw) as tls:
            return tls.getpeercert(binary_form=True)


def der(name):
    return ssl.PEM_cert_to_DER_cert((TLS / name).read_text())


def test_sighup_reads_a_renewed_certificate_and_a_bad_one_changes_nothing(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(TLS / "localhost.crt", cert)
    shutil.copy(TLS / "localhost.key", key)
    (tmp_path / "data").mkdir()
    server = Otpd(tmp_path / "data")
    server.env = {"OTPD_TLS_CERT_FILE": str(cert), "OTPD_TLS_KEY_FILE": str(key)}
    server.start()
    try:
        assert served_certificate(server) == der("localhost.crt")

        shutil.copy(TLS / "renewed.crt", cert)
        shutil.copy(TLS / "renewed.key", key)
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: served_certificate(server) == der("renewed.crt"))
        assert "read the TLS certificate and key again" in server.logs()

        # A renewal caught half-written: the new certificate with the old key.
        shutil.copy(TLS / "localhost.crt", cert)
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "cannot reload the TLS certificate" in server.logs())
        assert served_certificate(server) == der("renewed.crt")
        answer = requests.get(f"{server.url}/healthz", timeout=10, verify=str(TLS / "renewed.crt"))
        assert answer.status_code == 200
        assert server.process.poll() is None
    finally:
        server.stop()


def test_sighup_without_tls_is_logged_and_stops_nothing(tmp_path):
    server = Otpd(tmp_path)
    server.start()
    try:
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "SIGHUP: nothing to read again" in server.logs())
        assert server.process.poll() is None
        assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200
    finally:
        server.stop()
