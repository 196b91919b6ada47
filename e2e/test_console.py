"""The web console, as a browser would fetch it: only the operator gets in, every page shows what
the command line shows and nothing more (no code, no secret, no whole phone number), and every
value is escaped."""

import re
import subprocess

import pytest
import requests

from conftest import BIN, Otpd, SmsGateway, wait_for

TO = "393471239001"
HEADERS = {
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


@pytest.fixture(scope="module")
def operator(otpd):
    password = (otpd.data_dir / "console.password").read_text().strip()
    session = requests.Session()
    session.auth = ("operator", password)
    return session


@pytest.fixture(scope="module")
def shop(otpd):
    return otpd.create_account("Shop <b>&amp; Co</b>", credits=40)


@pytest.fixture(scope="module")
def sent(otpd, shop):
    """One amm send, checked once wrong and once right: its verify_id, message id and code."""
    verify_id, message_id = otpd.amm_send(shop, TO)
    amm = otpd.amm(shop)
    base = f"{otpd.url}/sms/v2/verify"
    code = otpd.last_code("+" + TO)
    wrong = ("1" if code[0] != "1" else "2") + code[1:]
    assert amm.get(f"{base}/check", params={"verify_id": verify_id, "verify_code": wrong}).json()["verify_status"] == "FAILED"
    assert amm.get(f"{base}/check", params={"verify_id": verify_id, "verify_code": code}).json()["verify_status"] == "VERIFIED"
    return {"verify_id": verify_id, "message_id": message_id, "code": code, "wrong": wrong}


def shows(page, secret):
    """Whether `secret` stands in `page` on its own: a 4-digit code also turns up, by chance,
    inside a hexadecimal id or a timestamp (a run once failed on "1855" inside a message id)."""
    return re.search(rf"(?<![0-9A-Za-z]){re.escape(secret)}(?![0-9A-Za-z])", page) is not None


def text_of(page):
    """The page's words, without its markup."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))


def test_only_the_operator_gets_in(otpd, operator):
    password = operator.auth[1]
    for auth in [None, ("operator", "wrong-password-123456"), ("admin", password), ("operator", password + "x")]:
        response = requests.get(f"{otpd.url}/console", auth=auth, timeout=10)
        assert response.status_code == 401, auth
        assert response.headers["www-authenticate"] == 'Basic realm="otpd console", charset="UTF-8"'
        assert "Shop" not in response.text
    assert operator.get(f"{otpd.url}/console", timeout=10).status_code == 200
    assert password not in otpd.logs(), "the password is never logged"


def test_every_page_forbids_scripts_framing_and_caching(otpd, operator, sent):
    for path in ["/console", f"/console/message?id={sent['message_id']}", "/console/message?id=nope"]:
        response = operator.get(otpd.url + path, timeout=10)
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        for name, value in HEADERS.items():
            assert response.headers[name] == value, (path, name)
        assert "<script" not in response.text


def test_the_overview_lists_accounts_with_their_credit_escaped(otpd, operator, shop, sent):
    page = operator.get(f"{otpd.url}/console", timeout=10).text
    assert "Shop &lt;b&gt;&amp;amp; Co&lt;/b&gt;" in page, "the name is text, not markup"
    row = re.search(rf"<tr><td>Shop.*?{shop['access_key_id']}.*?</tr>", page)
    assert row, page
    assert "<td>39</td>" in row.group(0), "40 credits less the one part sent"
    assert "<td>none</td>" in row.group(0), "no limits of its own"


def test_the_overview_shows_an_accounts_own_limits(otpd, operator):
    limited = otpd.create_account("Limited")
    otpd.cli("accounts", "limit", limited["access_key_id"], "--max-sms-per-hour", "120", "--countries", "it,de")
    for n in range(2):
        otpd.amm_send(limited, f"39348660100{n}")
    page = operator.get(f"{otpd.url}/console", timeout=10).text
    row = re.search(rf"<tr><td>Limited.*?{limited['access_key_id']}.*?</tr>", page)
    assert row, page
    assert "<td>120 SMS parts an hour (2 in the last), only DE,IT</td>" in row.group(0)
    assert "messages waiting for delivery" in text_of(page)
    assert "SMSC" not in page, "a file sink keeps no link to show"


def test_a_message_shows_its_delivery_without_its_text_or_number(otpd, operator, sent):
    # The delivery's outcome is stored a moment after the send has answered.
    def delivered():
        response = operator.get(f"{otpd.url}/console/message", params={"id": sent["message_id"]}, timeout=10)
        assert response.status_code == 200
        return response if "State sent" in text_of(response.text) else None

    response = wait_for(delivered, timeout=10)
    words = text_of(response.text)
    assert "Delivery status SUCCESSFUL" in words
    assert sent["verify_id"] in words
    assert "+39********01" in words
    assert not shows(response.text, TO) and not shows(response.text, sent["code"])


def test_a_verification_shows_its_checks_without_the_codes(otpd, operator, shop, sent):
    response = operator.get(
        f"{otpd.url}/console/verification",
        params={"account": shop["access_key_id"], "id": sent["verify_id"]},
        timeout=10,
    )
    assert response.status_code == 200
    words = text_of(response.text)
    assert "Status verified" in words
    assert "Attempts 2 of 3" in words
    assert "mismatch" in words and "verified" in words
    assert f'href="/console/message?id={sent["message_id"]}"' in response.text
    for secret in [sent["code"], sent["wrong"], shop["secret_access_key"], TO]:
        assert not shows(response.text, secret), secret


def test_unknown_ids_are_pages_of_their_own(otpd, operator, shop, sent):
    unknown = [
        ("/console/message", {"id": "0" * 32}),
        ("/console/message", {"id": "<i>not an id</i>"}),
        ("/console/message", {}),
        ("/console/verification", {"account": shop["access_key_id"], "id": "a" * 40}),
        ("/console/verification", {"account": "OTPDNOSUCHACCOUNT000", "id": sent["verify_id"]}),
    ]
    for path, params in unknown:
        response = operator.get(otpd.url + path, params=params, timeout=10)
        assert response.status_code == 404, (path, params)
        assert "<i>" not in response.text


def test_no_console_when_switched_off(tmp_path):
    server = Otpd(tmp_path)
    server.env["OTPD_NO_CONSOLE"] = "true"
    server.start()
    try:
        response = requests.get(f"{server.url}/console", timeout=10)
        assert response.status_code == 404
        assert response.json() == requests.get(f"{server.url}/no-such-page", timeout=10).json()
        assert not (tmp_path / "console.password").exists()
    finally:
        server.stop()


def test_a_short_password_is_refused_at_start(tmp_path):
    short = tmp_path / "short.password"
    short.write_text("letmein\n")
    result = subprocess.run(
        [BIN, "--data-dir", str(tmp_path), "serve", "--listen", "127.0.0.1:0", "--console-password-file", str(short)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "at least 16 characters" in result.stderr
    assert "letmein" not in result.stderr


def test_the_overview_lists_deliveries_given_up_on(tmp_path):
    # A provider that refuses every message for good.
    gateway = SmsGateway(status=400, answer=b'{"error": "number not allowed"}')
    server = Otpd(tmp_path, sms=gateway.url)
    server.start()
    try:
        _, message_id = server.amm_send(server.create_account(), TO)
        password = (tmp_path / "console.password").read_text().strip()

        # The dispatcher gives up on the message after the send has answered, so wait for it.
        def overview_lists_a_failure():
            page = requests.get(f"{server.url}/console", auth=("operator", password), timeout=10).text
            return re.search(r"Deliveries given up on</h2>(.*)</table>", page, re.S)

        listed = wait_for(overview_lists_a_failure)
        words = text_of(listed.group(1))
        assert message_id in words
        assert "+39********01" in words and TO not in listed.group(1)
        assert "PERMANENT_FAILURE" in words and "the provider answered 400 Bad Request" in words
    finally:
        server.stop()
        gateway.stop()


def test_an_address_that_guesses_wrong_too_often_is_refused_for_a_while(tmp_path):
    server = Otpd(tmp_path)
    server.start()
    try:
        console = f"{server.url}/console"
        password = (tmp_path / "console.password").read_text().strip()
        wrong = ("operator", "wrong-password-123456")
        # The right password clears the count: nine wrong, one right, nine wrong again.
        for _ in range(9):
            assert requests.get(console, auth=wrong, timeout=10).status_code == 401
        assert requests.get(console, auth=("operator", password), timeout=10).status_code == 200
        for _ in range(9):
            assert requests.get(console, auth=wrong, timeout=10).status_code == 401
        # The tenth wrong one in a row uses them up: from then on even the right password waits.
        assert requests.get(console, auth=wrong, timeout=10).status_code == 401
        refused = requests.get(console, auth=("operator", password), timeout=10)
        assert refused.status_code == 429
        assert 880 <= int(refused.headers["retry-after"]) <= 900
        assert "Try again in 15 minute(s)" in text_of(refused.text)
        for name, value in HEADERS.items():
            assert refused.headers[name] == value, name
        assert requests.get(console, timeout=10).status_code == 429
        wait_for(lambda: "too many wrong passwords from this address" in server.logs())
        assert password not in server.logs()
        # The APIs are not the console: they answer as before.
        assert requests.get(f"{server.url}/readyz", timeout=10).status_code == 200
    finally:
        server.stop()
