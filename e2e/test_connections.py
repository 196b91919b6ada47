"""Clients that hold on to a connection: one that sends nothing, half a request, or a body a little
at a time is cut off after the client timeout (a trickled body with a 408 in its dialect's
format), an idle keep-alive connection is closed then too, and past the connection limit new
clients wait their turn instead of using up the server's files; headers longer than the read
buffer are refused. A stop closes idle connections at once and answers the requests in flight."""

import base64
import http.client
import json
import re
import socket
import threading
import time
from urllib.parse import urlsplit

import pytest
import requests

from conftest import Otpd, SmsGateway, wait_for

# OTPD_CLIENT_TIMEOUT_SECONDS of the module's server.
TIMEOUT = 1


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Otpd(tmp_path_factory.mktemp("connections"))
    server.env = {"OTPD_CLIENT_TIMEOUT_SECONDS": str(TIMEOUT)}
    server.start()
    yield server
    server.stop()


def connect(server):
    address = urlsplit(server.url)
    return socket.create_connection((address.hostname, address.port), timeout=10)


def until_closed(sock):
    """Seconds until the server closes the connection, and what it sent before."""
    started = time.monotonic()
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return time.monotonic() - started, received


def response(sock):
    """The next response on `sock`: status, headers, body."""
    answer = http.client.HTTPResponse(sock)
    answer.begin()
    return answer.status, answer.headers, answer.read()


def test_a_client_that_sends_nothing_is_cut_off(server):
    with connect(server) as sock:
        waited, received = until_closed(sock)
    assert received == b""
    assert TIMEOUT * 0.8 <= waited < TIMEOUT + 4


def test_half_sent_headers_are_cut_off_without_an_answer(server):
    with connect(server) as sock:
        sock.sendall(b"POST /sms/v2/verify/send HTTP/1.1\r\nHost: otpd\r\nContent-Ty")
        waited, received = until_closed(sock)
    assert received == b""
    assert TIMEOUT * 0.8 <= waited < TIMEOUT + 4


def test_headers_too_long_for_the_read_buffer_are_answered_431(server):
    with connect(server) as sock:
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: otpd\r\nX-Padding: " + b"a" * 20_000 + b"\r\n\r\n"
        )
        status, _, _ = response(sock)
    assert status == 431
    # Headers the size the SDKs send are served as before.
    padded = requests.get(f"{server.url}/healthz", headers={"X-Padding": "a" * 4_000}, timeout=10)
    assert padded.status_code == 200


def test_a_keep_alive_connection_lasts_while_used_and_closes_when_idle(server):
    address = urlsplit(server.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    connection.request("GET", "/healthz")
    assert connection.getresponse().read() is not None
    first = connection.sock
    # Requests closer together than the timeout keep the one connection.
    for _ in range(3):
        time.sleep(TIMEOUT * 0.6)
        connection.request("GET", "/healthz")
        answer = connection.getresponse()
        answer.read()
        assert answer.status == 200
        assert connection.sock is first
    waited, received = until_closed(first)
    assert received == b""
    assert TIMEOUT * 0.8 <= waited < TIMEOUT + 4
    connection.close()


def trickle(server, path, content_type):
    """Sends a request whose body stops a tenth of the way; returns the answer and its time."""
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: otpd\r\nContent-Type: {content_type}\r\n"
            "Content-Length: 100\r\n\r\n0123456789".encode()
        )
        answer = response(sock)
        return answer, time.monotonic() - started


def test_a_trickled_pinpoint_body_is_answered_408_in_pinpoint_format(server):
    (status, headers, body), waited = trickle(server, "/v1/apps/shop/otp", "application/json")
    assert status == 408
    assert headers["x-amzn-errortype"] == "RequestTimeoutException"
    answer = json.loads(body)
    assert answer["Message"] == f"The request body did not arrive within {TIMEOUT} seconds"
    assert answer["RequestID"] == headers["x-amzn-requestid"]
    assert TIMEOUT * 0.8 <= waited < TIMEOUT + 4


def test_a_trickled_amm_body_is_answered_408_in_amm_format(server):
    (status, _, body), waited = trickle(
        server, "/sms/v2/verify/send", "application/x-www-form-urlencoded"
    )
    assert status == 408
    assert json.loads(body) == {"errorMsg": "REQUEST_TIMEOUT"}
    assert TIMEOUT * 0.8 <= waited < TIMEOUT + 4
    wait_for(lambda: "status=408" in server.logs())


def test_a_body_sent_in_pieces_within_the_timeout_is_served(server):
    account = server.create_account("pieces")
    body = b"to=393471230001&text=Code+%24%7Bverify_code%7D"
    with connect(server) as sock:
        credentials = f"{account['access_key_id']}:{account['secret_access_key']}"
        sock.sendall(
            b"POST /sms/v2/verify/send HTTP/1.1\r\nHost: otpd\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            + f"Authorization: Basic {base64.b64encode(credentials.encode()).decode()}\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:10]
        )
        time.sleep(TIMEOUT * 0.5)
        sock.sendall(body[10:])
        status, _, answer = response(sock)
    assert status == 200, answer
    assert len(json.loads(answer)["verify_id"]) == 40
    wait_for(lambda: any(m["to"] == "+393471230001" for m in server.messages()))


def test_metrics_count_open_and_cut_off_connections(server):
    with connect(server) as sock:
        until_closed(sock)
    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    timed_out = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("otpd_http_connections_timed_out_total ")
    )
    assert timed_out >= 1
    # The scrape's own connection is open while the answer is made.
    assert "\notpd_http_connections 1\n" in metrics


def test_past_the_connection_limit_clients_wait_their_turn(tmp_path):
    server = Otpd(tmp_path)
    server.env = {"OTPD_MAX_CONNECTIONS": "2"}
    server.start()
    try:
        held = [connect(server), connect(server)]
        wait_for(lambda: "every connection is in use" in server.logs())
        waiting = connect(server)
        waiting.sendall(b"GET /readyz HTTP/1.1\r\nHost: otpd\r\n\r\n")
        waiting.settimeout(0.5)
        with pytest.raises(socket.timeout):
            waiting.recv(1)
        held.pop().close()
        waiting.settimeout(10)
        status, _, _ = response(waiting)
        assert status == 200
        waiting.close()
        held.pop().close()
        assert requests.get(f"{server.url}/readyz", timeout=10).status_code == 200
    finally:
        server.stop()


def test_stopping_closes_idle_connections_at_once(tmp_path):
    server = Otpd(tmp_path)
    server.start()
    address = urlsplit(server.url)
    idle = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    idle.request("GET", "/healthz")
    idle.getresponse().read()
    started = time.monotonic()
    server.process.terminate()
    waited, received = until_closed(idle.sock)
    assert received == b""
    assert waited < 2
    assert server.process.wait(timeout=10) == 0
    assert time.monotonic() - started < 5
    server.stop()


def test_stopping_answers_the_request_in_flight(tmp_path):
    # A Pinpoint send waits for its first delivery attempt: against this provider, a second.
    provider = SmsGateway(delay=1.0)
    server = Otpd(tmp_path, sms=provider.url)
    server.start()
    try:
        account = server.create_account()
        app = server.create_app(account)
        answers = []

        def send():
            answers.append(
                server.pinpoint(account).send_otp_message(
                    ApplicationId=app,
                    SendOTPMessageRequestParameters={
                        "Channel": "SMS",
                        "BrandName": "Acme",
                        "OriginationIdentity": "+12065550100",
                        "DestinationIdentity": "+393481230009",
                        "ReferenceId": "in-flight",
                    },
                )
            )

        sending = threading.Thread(target=send)
        sending.start()
        wait_for(lambda: provider.received)
        server.process.terminate()
        sending.join(timeout=15)
        result = answers[0]["MessageResponse"]["Result"]["+393481230009"]
        assert result["DeliveryStatus"] == "SUCCESSFUL"
        assert re.fullmatch(r"[0-9a-f]{32}", result["MessageId"])
        assert server.process.wait(timeout=15) == 0
        assert len(provider.received) == 1
    finally:
        server.stop()
        provider.stop()
