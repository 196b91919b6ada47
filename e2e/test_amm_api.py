"""The amm SMS OTP API driven by Python `requests`, as the provider's own Python sample does:
every flow, every error code and every verify_status."""

import itertools
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

_numbers = itertools.count(2000000)


def new_number():
    return f"39347{next(_numbers):07d}"


@pytest.fixture(scope="module")
def amm(otpd, account):
    return otpd.amm(account)


def url(otpd, operation):
    return f"{otpd.url}/sms/v2/verify/{operation}"


def send(otpd, amm, to=None, text="Codice ${verify_code}", **params):
    response = amm.post(url(otpd, "send"), data={"to": new_number() if to is None else to, "text": text, **params})
    return response


def sent(otpd, amm, to=None, **params):
    """A successful send: the verify_id and the code that reached the phone."""
    to = to or new_number()
    response = send(otpd, amm, to=to, **params)
    assert response.status_code == 200, response.text
    verify_id = response.json()["verify_id"]
    if params.get("sandbox") in ("true", "True"):
        code = amm.get(url(otpd, "search"), params={"verify_id": verify_id}).json()["codice"]
    else:
        code = otpd.last_code("+" + to)
    return verify_id, code


def check(otpd, amm, verify_id, code, **params):
    response = amm.get(url(otpd, "check"), params={"verify_id": verify_id, "verify_code": code, **params})
    assert response.status_code == 200, response.text
    return response.json()


def search(otpd, amm, verify_id):
    response = amm.get(url(otpd, "search"), params={"verify_id": verify_id})
    assert response.status_code == 200, response.text
    return response.json()


def wrong(code):
    return ("1" if code[0] != "1" else "2") + code[1:]


def error(response):
    return response.status_code, response.json().get("errorMsg")


def test_python_sample_sandbox_send_with_query_parameters(otpd, amm):
    """The provider's Python sample sends its parameters in the query string of the POST."""
    to = new_number()
    before = len(otpd.messages())
    response = amm.post(url(otpd, "send"), params={"to": to, "text": "Codice ${verify_code}", "sandbox": "true"})
    assert response.status_code == 200
    verify_id = response.json()["verify_id"]
    assert len(otpd.messages()) == before, "a sandbox send reaches no carrier"
    found = search(otpd, amm, verify_id)
    assert found["verify_status"] == "PENDING"
    assert len(found["codice"]) == 4
    assert found["to"] == to
    assert found["valid_until"] - found["date_submit"] == 300_000
    assert check(otpd, amm, verify_id, found["codice"])["verify_status"] == "VERIFIED"


def test_full_flow_and_search_history(otpd, amm):
    to = new_number()
    verify_id, code = sent(otpd, amm, to=to, **{"from": "MyShop", "code_len": "6", "app_id": "web"})
    assert len(code) == 6
    message = otpd.messages()[-1]
    assert message["from"] == "MyShop" and message["text"] == f"Codice {code}"
    failed = check(otpd, amm, verify_id, wrong(code), ip_address="192.168.1.1")
    assert failed == {"id_sms": message["message_id"], "verify_status": "FAILED"}
    assert check(otpd, amm, verify_id, code, ip_address="192.168.1.2")["verify_status"] == "VERIFIED"
    assert check(otpd, amm, verify_id, code)["verify_status"] == "REUSED"
    found = search(otpd, amm, verify_id)
    assert found["verify_status"] == "VERIFIED"
    assert found["from"] == "MyShop" and found["to"] == to
    assert found["id_sms"] == message["message_id"]
    assert "codice" not in found, "the code is shown only for sandbox sends"
    assert [c["verify_status"] for c in found["checks"]] == ["FAILED", "VERIFIED", "REUSED"]
    assert [c["verify_code"] for c in found["checks"]] == [wrong(code), code, code]
    assert [c["ip_address"] for c in found["checks"]] == ["192.168.1.1", "192.168.1.2", ""]
    assert all(found["date_submit"] <= c["date"] <= found["valid_until"] for c in found["checks"])


def test_a_submitted_code_with_a_nul_is_a_wrong_code_kept_printable(otpd, amm):
    # On PostgreSQL the search history's NUL used to reach the database, whose text cannot hold
    # one: a 500.
    verify_id, code = sent(otpd, amm, to=new_number())
    assert check(otpd, amm, verify_id, code[:2] + "\u0000" + code[2:])["verify_status"] == "FAILED"
    assert check(otpd, amm, verify_id, code)["verify_status"] == "VERIFIED"
    history = [c["verify_code"] for c in search(otpd, amm, verify_id)["checks"]]
    assert history == [code[:2] + "\ufffd" + code[2:], code]


def test_max_retry_kills_the_code(otpd, amm):
    verify_id, code = sent(otpd, amm, max_retry="2")
    assert check(otpd, amm, verify_id, wrong(code))["verify_status"] == "FAILED"
    assert check(otpd, amm, verify_id, wrong(code))["verify_status"] == "FAILED"
    assert check(otpd, amm, verify_id, code)["verify_status"] == "FAILED"
    assert search(otpd, amm, verify_id)["verify_status"] == "FAILED"


def test_expired_after_ttl(otpd, amm):
    verify_id, code = sent(otpd, amm, ttl="10")
    time.sleep(10.3)
    assert check(otpd, amm, verify_id, code)["verify_status"] == "EXPIRED"
    assert search(otpd, amm, verify_id)["verify_status"] == "EXPIRED"


def test_unknown_verify_id_status(otpd, amm):
    assert check(otpd, amm, "0" * 40, "1234") == {"id_sms": "", "verify_status": "VERIFY ID ERROR"}


def test_cancelled_by_command(otpd, amm):
    verify_id, code = sent(otpd, amm)
    response = amm.post(url(otpd, "command"), data={"verify_id": verify_id, "command": "DELETE"})
    assert (response.status_code, response.json()) == (200, {"command": "DELETE"})
    assert check(otpd, amm, verify_id, code)["verify_status"] == "CANCELLED"
    again = amm.post(url(otpd, "command"), data={"verify_id": verify_id, "command": "DELETE"})
    assert error(again) == (400, "BAD STATUS")


def test_a_newer_send_cancels_the_live_code_of_the_same_app(otpd, amm):
    to = new_number()
    first, first_code = sent(otpd, amm, to=to, app_id="shop")
    other_app, other_code = sent(otpd, amm, to=to, app_id="blog")
    second, second_code = sent(otpd, amm, to=to, app_id="shop")
    assert search(otpd, amm, first)["verify_status"] == "CANCELLED"
    assert check(otpd, amm, first, first_code)["verify_status"] == "CANCELLED"
    assert check(otpd, amm, second, second_code)["verify_status"] == "VERIFIED"
    assert check(otpd, amm, other_app, other_code)["verify_status"] == "VERIFIED"


@pytest.mark.parametrize(
    "params, code",
    [
        ({"to": ""}, "BAD_TO"),
        ({"to": "12345"}, "BAD_TO"),
        ({"to": "390612345678"}, "BAD_TO"),
        ({"text": ""}, "BAD_TEXT"),
        ({"text": "no placeholder"}, "BAD_TEXT_PLACEHOLDER"),
        ({"text": "Ciao ${name}, codice ${verify_code}"}, "BAD_TEXT_PLACEHOLDER"),
        ({"text": "x" * 800 + "${verify_code}"}, "BAD_TEXT"),
        ({"text": "Código ${verify_code}", "encoding": "7BIT"}, "BAD_TEXT"),
        ({"from": "TwelveChars1"}, "BAD_FROM"),
        ({"encoding": "UTF8"}, "BAD_ENCODING"),
        ({"app_id": "a" * 65}, "BAD_APP_ID"),
        ({"code_len": "3"}, "BAD_COD_LEN"),
        ({"code_len": "7"}, "BAD_COD_LEN"),
        ({"max_retry": "0"}, "BAD_RETRY"),
        ({"max_retry": "21"}, "BAD_RETRY"),
        ({"ttl": "9"}, "BAD_TTL"),
        ({"ttl": "abc"}, "BAD_TTL"),
    ],
)
def test_send_errors(otpd, amm, params, code):
    assert error(send(otpd, amm, **params)) == (400, code)


def test_antispam_after_ten_sms_to_one_recipient(otpd, amm):
    to = new_number()
    for _ in range(10):
        sent(otpd, amm, to=to, sandbox="true")
    refused = send(otpd, amm, to=to)
    assert error(refused) == (400, "ANTISPAM")
    assert 3000 < int(refused.headers["Retry-After"]) <= 3600, "when the first send leaves the hour"
    sent(otpd, amm)  # another recipient is fine


def test_antispam_for_wrong_checks_from_one_ip_address(otpd):
    account = otpd.create_account("ip-limited")
    amm = otpd.amm(account)
    codes = [sent(otpd, amm, max_retry="20") for _ in range(2)]
    for i in range(20):
        verify_id, code = codes[i % 2]
        # Wrong for certain: a fixed guess such as "0000" is some code's right one, one time in 10,000.
        assert check(otpd, amm, verify_id, wrong(code), ip_address="198.51.100.9")["verify_status"] == "FAILED"
    response = amm.get(url(otpd, "check"), params={"verify_id": codes[0][0], "verify_code": "0", "ip_address": "198.51.100.9"})
    assert error(response) == (400, "ANTISPAM")
    assert 3000 < int(response.headers["Retry-After"]) <= 3600, "when the first wrong check leaves the hour"


def test_check_command_search_errors(otpd, amm):
    verify_id, _ = sent(otpd, amm)
    assert error(amm.get(url(otpd, "check"), params={"verify_code": "1234"})) == (400, "VERIFY ID ERROR")
    assert error(amm.get(url(otpd, "check"), params={"verify_id": "xyz", "verify_code": "1"})) == (400, "VERIFY ID ERROR")
    assert error(amm.post(url(otpd, "command"), data={"command": "DELETE"})) == (400, "VERIFY ID ERROR")
    assert error(amm.post(url(otpd, "command"), data={"verify_id": "0" * 40, "command": "DELETE"})) == (400, "VERIFY ID ERROR")
    assert error(amm.post(url(otpd, "command"), data={"verify_id": verify_id, "command": "STOP"})) == (400, "BAD_COMMAND")
    assert error(amm.get(url(otpd, "search"))) == (400, "NO_PARAMS")
    assert error(amm.get(url(otpd, "search"), params={"verify_id": "0" * 40})) == (400, "VERIFY ID ERROR")


def test_codes_of_another_account_are_invisible(otpd, amm):
    verify_id, code = sent(otpd, amm)
    stranger = otpd.amm(otpd.create_account("stranger"))
    assert check(otpd, stranger, verify_id, code)["verify_status"] == "VERIFY ID ERROR"
    assert error(stranger.get(url(otpd, "search"), params={"verify_id": verify_id})) == (400, "VERIFY ID ERROR")
    assert check(otpd, amm, verify_id, code)["verify_status"] == "VERIFIED"


def test_credentials(otpd, account):
    for auth in [None, (account["access_key_id"], "wrong"), ("OTPDAAAAAAAAAAAAAAAA", "x"), ("bad key", "x")]:
        response = requests.post(url(otpd, "send"), data={"to": new_number(), "text": "${verify_code}"}, auth=auth)
        assert error(response) == (401, "UNAUTHORIZED")
        assert response.headers["WWW-Authenticate"].startswith("Basic")


@pytest.mark.parametrize(
    "method, operation",
    [("GET", "send"), ("PUT", "send"), ("POST", "check"), ("DELETE", "check"), ("GET", "command"), ("POST", "search")],
)
def test_wrong_methods(otpd, amm, method, operation):
    response = amm.request(method, url(otpd, operation))
    assert response.status_code == 405


def test_multipart_and_ucs2_messages(otpd, amm):
    to = new_number()
    sent(otpd, amm, to=to, text="a" * 200 + " ${verify_code}")
    message = otpd.messages()[-1]
    assert (message["encoding"], message["parts"]) == ("GSM7", 2)
    sent(otpd, amm, to=to, text="Il tuo codice è ${verify_code} – grazie", encoding="AUTO")
    message = otpd.messages()[-1]
    assert message["encoding"] == "UCS2" and message["parts"] == 1
    assert "–" in message["text"]
    sent(otpd, amm, to=to, text="€" * 80 + "${verify_code}", encoding="7BIT")
    assert otpd.messages()[-1]["parts"] == 2, "an extension character costs two septets"
    sent(otpd, amm, to=to, text="Ciao ${verify_code}", encoding="UCS2")
    assert otpd.messages()[-1]["encoding"] == "UCS2"


def test_credit_edges(otpd):
    account = otpd.create_account("metered", credits=3)
    amm = otpd.amm(account)
    two_parts = "a" * 200 + " ${verify_code}"
    sent(otpd, amm, text=two_parts)
    assert otpd.account_info(account["access_key_id"])["credits"] == 1
    assert error(send(otpd, amm, text=two_parts)) == (400, "NO_CREDIT")
    sent(otpd, amm, text=two_parts, sandbox="true")  # sandbox sends cost nothing
    sent(otpd, amm)  # exactly enough for one part
    assert otpd.account_info(account["access_key_id"])["credits"] == 0
    assert error(send(otpd, amm)) == (400, "NO_CREDIT")


def test_parallel_sends_never_overdraw(otpd):
    account = otpd.create_account("parallel", credits=25)
    amm = otpd.amm(account)
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda _: send(otpd, amm), range(60)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 25
    assert all(r.json() == {"errorMsg": "NO_CREDIT"} for r in responses if r.status_code != 200)
    assert otpd.account_info(account["access_key_id"])["credits"] == 0


def test_parallel_checks(otpd, amm):
    verify_id, code = sent(otpd, amm, max_retry="5")
    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(lambda _: check(otpd, amm, verify_id, code)["verify_status"], range(100)))
    assert outcomes.count("VERIFIED") == 1
    assert outcomes.count("REUSED") == 99

    verify_id, code = sent(otpd, amm, max_retry="5")
    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(lambda _: check(otpd, amm, verify_id, wrong(code))["verify_status"], range(60)))
    assert set(outcomes) == {"FAILED"}
    assert check(otpd, amm, verify_id, code)["verify_status"] == "FAILED", "five wrong guesses killed it"


def test_logs_hold_no_codes_or_query_strings(otpd, amm):
    verify_id, code = sent(otpd, amm, code_len="6")
    response = amm.get(url(otpd, "check"), params={"verify_id": verify_id, "verify_code": code})
    assert response.json()["verify_status"] == "VERIFIED"
    logs = otpd.logs_through(response.headers["x-request-id"])
    assert "verify_code=" not in logs, "query strings are never logged"
    # Line timestamps and latencies are numbers too: look for the code as a word elsewhere.
    words = re.findall(r"(?<![\d.])\d{6}(?![\d.])", re.sub(r"latency_us=\d+", "", logs.replace(verify_id, "")))
    assert code not in words


def test_logs_name_the_caller_behind_a_load_balancer(otpd, amm):
    verify_id, _ = sent(otpd, amm)
    response = amm.get(
        url(otpd, "search"), params={"verify_id": verify_id}, headers={"X-Forwarded-For": "203.0.113.9, 10.0.0.2"}
    )
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    line = next(line for line in otpd.logs_through(request_id).splitlines() if request_id in line)
    assert "peer=127.0.0.1" in line
    assert 'forwarded_for="203.0.113.9, 10.0.0.2"' in line
