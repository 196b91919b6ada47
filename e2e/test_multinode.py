"""Two otpd nodes sharing one PostgreSQL database: every guarantee holds across them.

Each node is a real `otpd serve` process on its own port with its own file SMS sink; they share
the database and the server key, as a deployment behind a load balancer does.
"""

import itertools
import re
import secrets
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import Otpd, ScratchDatabase, wait_for

_numbers = itertools.count(5000000)


def new_number():
    return f"39347{next(_numbers):07d}"


@pytest.fixture(scope="module")
def database():
    scratch = ScratchDatabase("multinode")
    yield scratch
    scratch.drop()


@pytest.fixture(scope="module")
def key_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("key") / "otpd.key"
    path.write_text(secrets.token_hex(32))
    return path


def start_node(tmp_path_factory, database, key_file, name, sms=None):
    node = Otpd(tmp_path_factory.mktemp(name), sms=sms, database_url=database.url, key_file=key_file)
    node.start()
    return node


@pytest.fixture(scope="module")
def nodes(tmp_path_factory, database, key_file):
    started = [start_node(tmp_path_factory, database, key_file, name) for name in ("node-a", "node-b")]
    yield started
    for node in started:
        node.stop()


def amm_send(node, session, to, **params):
    return session.post(f"{node.url}/sms/v2/verify/send", data={"to": to, "text": "Code ${verify_code}", **params})


def amm_check(node, session, verify_id, code, **params):
    return session.get(
        f"{node.url}/sms/v2/verify/check", params={"verify_id": verify_id, "verify_code": code, **params}
    )


def code_sent_to(nodes, to):
    """The code of the newest message to `to`, whichever node delivered it."""
    for node in nodes:
        for message in reversed(node.messages()):
            if message["to"] == to:
                return re.search(r"\d{4,8}", message["text"]).group(0)
    raise AssertionError(f"no message to {to}")


def wrong(code):
    return ("1" if code[0] != "1" else "2") + code[1:]


def test_send_on_one_node_verify_on_the_other(nodes):
    a, b = nodes
    account = a.create_account("cross")
    app_id = a.create_app(account)
    to = "+" + new_number()
    a.pinpoint(account).send_otp_message(
        ApplicationId=app_id,
        SendOTPMessageRequestParameters={
            "Channel": "SMS", "BrandName": "Shop", "DestinationIdentity": to,
            "OriginationIdentity": "Shop", "ReferenceId": "login",
        },
    )
    code = code_sent_to([a], to)
    verified = b.pinpoint(account).verify_otp_message(
        ApplicationId=app_id,
        VerifyOTPMessageRequestParameters={"DestinationIdentity": to, "Otp": code, "ReferenceId": "login"},
    )
    assert verified["VerificationResponse"]["Valid"] is True

    session = b.amm(account)
    to = new_number()
    verify_id = amm_send(b, session, to).json()["verify_id"]
    code = code_sent_to([b], "+" + to)
    assert amm_check(a, a.amm(account), verify_id, code).json()["verify_status"] == "VERIFIED"
    assert amm_check(b, session, verify_id, code).json()["verify_status"] == "REUSED"


def test_parallel_wrong_guesses_on_both_nodes_count_at_most_the_limit(nodes, database):
    a, b = nodes
    account = a.create_account("guesses")
    app_id = a.create_app(account)
    clients = [node.pinpoint(account) for node in nodes]
    to = "+" + new_number()
    clients[0].send_otp_message(
        ApplicationId=app_id,
        SendOTPMessageRequestParameters={
            "Channel": "SMS", "BrandName": "Shop", "DestinationIdentity": to,
            "OriginationIdentity": "Shop", "ReferenceId": "guess", "AllowedAttempts": 5,
        },
    )
    code = code_sent_to([a], to)

    def guess(i):
        return clients[i % 2].verify_otp_message(
            ApplicationId=app_id,
            VerifyOTPMessageRequestParameters={"DestinationIdentity": to, "Otp": wrong(code), "ReferenceId": "guess"},
        )["VerificationResponse"]["Valid"]

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(guess, range(200)))
    assert not any(results)
    used = database.query(f"SELECT attempts_used FROM verifications WHERE destination = '{to}'")
    assert used == "5", "200 parallel wrong guesses on two nodes reserved exactly the 5 allowed attempts"
    right = clients[1].verify_otp_message(
        ApplicationId=app_id,
        VerifyOTPMessageRequestParameters={"DestinationIdentity": to, "Otp": code, "ReferenceId": "guess"},
    )
    assert right["VerificationResponse"]["Valid"] is False, "the attempts are used up on every node"


def test_parallel_right_codes_on_both_nodes_verify_once(nodes):
    a, b = nodes
    account = a.create_account("right")
    sessions = [node.amm(account) for node in nodes]
    to = new_number()
    verify_id = amm_send(a, sessions[0], to).json()["verify_id"]
    code = code_sent_to([a], "+" + to)

    def check(i):
        return amm_check(nodes[i % 2], sessions[i % 2], verify_id, code).json()["verify_status"]

    with ThreadPoolExecutor(16) as pool:
        statuses = Counter(pool.map(check, range(40)))
    assert statuses == {"VERIFIED": 1, "REUSED": 39}


def test_antispam_holds_across_nodes(nodes):
    a, b = nodes
    account = a.create_account("antispam")
    sessions = [node.amm(account) for node in nodes]
    to = new_number()

    def send(i):
        response = amm_send(nodes[i % 2], sessions[i % 2], to, sandbox="true")
        return response.status_code, response.json().get("errorMsg")

    with ThreadPoolExecutor(12) as pool:
        answers = Counter(pool.map(send, range(14)))
    assert answers == {(200, None): 10, (400, "ANTISPAM"): 4}


def test_credit_holds_across_nodes(nodes):
    a, b = nodes
    account = a.create_account("credit", credits=15)
    sessions = [node.amm(account) for node in nodes]

    def send(i):
        response = amm_send(nodes[i % 2], sessions[i % 2], new_number())
        return response.status_code, response.json().get("errorMsg")

    with ThreadPoolExecutor(16) as pool:
        answers = Counter(pool.map(send, range(30)))
    assert answers == {(200, None): 15, (400, "NO_CREDIT"): 15}
    assert b.account_info(account["access_key_id"])["credits"] == 0


def test_the_per_address_limit_holds_across_nodes(nodes):
    a, b = nodes
    account = a.create_account("per-ip")
    sessions = [node.amm(account) for node in nodes]
    numbers = [new_number() for _ in range(4)]
    verify_ids = [amm_send(a, sessions[0], to, max_retry="20").json()["verify_id"] for to in numbers]
    # Wrong for certain: a fixed guess such as "0000" is some code's right one, one time in 10,000.
    guesses = [wrong(code_sent_to([a], "+" + to)) for to in numbers]

    def check(i):
        response = amm_check(nodes[i % 2], sessions[i % 2], verify_ids[i % 4], guesses[i % 4], ip_address="203.0.113.5")
        return response.status_code, response.json().get("verify_status") or response.json().get("errorMsg")

    with ThreadPoolExecutor(16) as pool:
        answers = Counter(pool.map(check, range(40)))
    assert answers == {(200, "FAILED"): 20, (400, "ANTISPAM"): 20}


def test_every_message_is_delivered_exactly_once(tmp_path_factory, nodes, database, key_file):
    """A third node whose provider is down accepts sends, then leaves; the other two take its
    messages over from the shared outbox, and each message reaches the network exactly once."""
    a, b = nodes
    broken = start_node(tmp_path_factory, database, key_file, "node-broken", sms="http://127.0.0.1:9/sms")
    try:
        account = a.create_account("outbox")
        senders = [(node, node.amm(account)) for node in (a, b, broken)]
        numbers = [new_number() for _ in range(60)]

        def send(i):
            node, session = senders[i % 3]
            response = amm_send(node, session, numbers[i], ttl="600")
            assert response.status_code == 200, response.text
            return response.json()["verify_id"]

        with ThreadPoolExecutor(12) as pool:
            verify_ids = list(pool.map(send, range(len(numbers))))
        broken.stop()
        query = (
            "SELECT count(*) FROM outbox o JOIN verifications v ON v.id = o.verification_id "
            f"WHERE o.state <> 'sent' AND v.account_id = '{account['account_id']}'"
        )
        wait_for(lambda: database.query(query) == "0", timeout=30)
        delivered = Counter(message["to"] for node in (a, b) for message in node.messages())
        assert all(delivered["+" + number] == 1 for number in numbers), "each message exactly once"
        assert not broken.messages()
        retried = int(database.query(
            "SELECT count(*) FROM outbox o JOIN verifications v ON v.id = o.verification_id "
            f"WHERE o.attempts > 1 AND v.account_id = '{account['account_id']}'"
        ))
        assert retried >= 20, "the broken node's messages were taken over by the others"
        assert len(verify_ids) == len(set(verify_ids))
    finally:
        broken.stop()
