"""Delivery over SMPP v3.4 to a third-party SMSC (node-smpp's server mode, e2e/smsc)."""

import itertools
import time

import pytest
import requests

from conftest import Otpd, Smsc, wait_for

_numbers = itertools.count(3000000)


def new_number():
    return f"39346{next(_numbers):07d}"


@pytest.fixture(scope="module")
def smsc(tmp_path_factory):
    server = Smsc(tmp_path_factory.mktemp("smsc"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def otpd(tmp_path_factory, smsc):
    server = Otpd(tmp_path_factory.mktemp("otpd-smpp"), sms=smsc.url)
    server.start()
    yield server
    server.stop()


def submits_to(smsc, to):
    return [e for e in smsc.events("submit_sm") if e["destination_addr"] == to]


def send(otpd, amm, to, text, **params):
    response = amm.post(f"{otpd.url}/sms/v2/verify/send", data={"to": to, "text": text, **params})
    assert response.status_code == 200, response.text
    return response.json()["verify_id"]


def search(otpd, amm, verify_id):
    return amm.get(f"{otpd.url}/sms/v2/verify/search", params={"verify_id": verify_id}).json()


def test_single_gsm_message_arrives_byte_correct(otpd, smsc, account):
    amm = otpd.amm(account)
    to = new_number()
    send(otpd, amm, to, "Codice {€} ${verify_code}", **{"from": "MyShop"})
    [submit] = wait_for(lambda: submits_to(smsc, to))
    assert submit["data_coding"] == 0 and submit["esm_class"] == 0 and submit["udh"] == []
    assert submit["text"].startswith("Codice {€} ") and submit["text"][-4:].isdigit()
    assert (submit["source_addr"], submit["source_addr_ton"], submit["source_addr_npi"]) == ("MyShop", 5, 0)
    assert (submit["dest_addr_ton"], submit["dest_addr_npi"]) == (1, 1)
    assert submit["registered_delivery"] == 1


def test_multipart_gsm_and_ucs2_messages(otpd, smsc, account):
    amm = otpd.amm(account)
    to = new_number()
    text = "a" * 200 + " ${verify_code}"
    send(otpd, amm, to, text, **{"from": "393331234567"})
    parts = wait_for(lambda: len(submits_to(smsc, to)) == 2 and submits_to(smsc, to))
    assert [p["esm_class"] for p in parts] == [0x40, 0x40]
    reference = parts[0]["udh"][0][6:8]
    assert [p["udh"][0] for p in parts] == [f"0003{reference}0201", f"0003{reference}0202"]
    assert len(parts[0]["text"]) == 153
    assert "".join(p["text"] for p in parts)[:201] == "a" * 200 + " "
    assert [p["registered_delivery"] for p in parts] == [0, 1]
    assert (parts[0]["source_addr"], parts[0]["source_addr_ton"], parts[0]["source_addr_npi"]) == ("393331234567", 1, 1)

    to = new_number()
    send(otpd, amm, to, "Il codice è ${verify_code} ✓ " + "ü" * 70, encoding="AUTO", **{"from": "12345"})
    parts = wait_for(lambda: len(submits_to(smsc, to)) == 2 and submits_to(smsc, to))
    assert [p["data_coding"] for p in parts] == [8, 8]
    assert len(parts[0]["text"]) == 67
    joined = "".join(p["text"] for p in parts)
    assert joined.startswith("Il codice è ") and joined.endswith(" ✓ " + "ü" * 70)
    assert (parts[0]["source_addr_ton"], parts[0]["source_addr_npi"]) == (3, 0)


def test_receipts_update_the_delivery_status(otpd, smsc, account):
    amm = otpd.amm(account)
    verify_id = send(otpd, amm, new_number(), "Code ${verify_code}")
    found = wait_for(lambda: (f := search(otpd, amm, verify_id)).get("delivery_status") == "DELIVRD" and f)
    record = otpd.message_record(found["id_sms"])
    assert record["receipt_state"] == "DELIVRD"
    assert record["carrier_message_id"] in {e["id"] for e in smsc.events("submit_sm")}
    answers = [e["command_status"] for e in smsc.events("deliver_sm_resp") if e["id"] == record["carrier_message_id"]]
    assert answers == [0], "a stored receipt is acknowledged once, with ESME_ROK"
    # Every receipt this module's SMSC delivered (each DELIVRD, each for a known message) and
    # otpd acknowledged was counted once.
    wait_for(lambda: otpd.metric("otpd_sms_receipts_total", state="DELIVRD") == receipts_acknowledged(smsc))
    assert otpd.metric("otpd_sms_receipts_total", state="UNDELIV") == 0
    assert otpd.metric("otpd_smpp_bound") == 1


def receipts_acknowledged(smsc):
    """The messages whose receipt otpd acknowledged with ESME_ROK, however often it came."""
    return len({e["id"] for e in smsc.events("deliver_sm_resp") if e["command_status"] == 0})


def test_a_receipt_delivered_again_is_acknowledged_each_time_and_counted_once(otpd, smsc, account):
    # As an SMSC does when it misses our acknowledgement: the same receipt twice more.
    smsc.steer(repeat_receipts=2)
    try:
        amm = otpd.amm(account)
        verify_id = send(otpd, amm, new_number(), "Code ${verify_code}")
        found = wait_for(lambda: (f := search(otpd, amm, verify_id)).get("delivery_status") == "DELIVRD" and f)
        first = otpd.message_record(found["id_sms"])
        carrier_id = first["carrier_message_id"]
        answers = lambda: [e["command_status"] for e in smsc.events("deliver_sm_resp") if e["id"] == carrier_id]
        wait_for(lambda: len(answers()) == 3)
        assert answers() == [0, 0, 0], "each delivery of the receipt is acknowledged"
        wait_for(lambda: otpd.metric("otpd_sms_receipts_total", state="DELIVRD") == receipts_acknowledged(smsc))
        again = otpd.message_record(found["id_sms"])
        assert (again["receipt_state"], again["receipt_at"]) == (first["receipt_state"], first["receipt_at"])
    finally:
        smsc.steer(repeat_receipts=0)


def test_pinpoint_reports_the_smsc_answer(otpd, smsc, account, app_id):
    client = otpd.pinpoint(account)
    to = "+" + new_number()
    smsc.steer(throttle_next=1)
    response = client.send_otp_message(
        ApplicationId=app_id,
        SendOTPMessageRequestParameters={
            "Channel": "SMS", "BrandName": "Acme", "OriginationIdentity": "Acme",
            "DestinationIdentity": to, "ReferenceId": "smpp",
        },
    )["MessageResponse"]["Result"][to]
    assert response["DeliveryStatus"] == "THROTTLED"
    assert response["StatusCode"] == 0x58
    # Still a 200: the message is committed and goes out on the retry.
    [submit] = wait_for(lambda: submits_to(smsc, to[1:]))
    assert submit["text"].startswith("This is your One Time Password: ")


def test_throttling_answers_are_retried(otpd, smsc, account):
    amm = otpd.amm(account)
    to = new_number()
    smsc.steer(throttle_next=2)
    verify_id = send(otpd, amm, to, "Code ${verify_code}")
    wait_for(lambda: submits_to(smsc, to), timeout=20)
    found = search(otpd, amm, verify_id)
    # The SMSC has the message; its outcome is committed a moment after.
    record = wait_for(
        lambda: (r := otpd.message_record(found["id_sms"]))["state"] == "sent" and r
    )
    assert record["attempts"] == 3
    assert len(submits_to(smsc, to)) == 1


def test_a_dropped_link_reconnects(otpd, smsc, account):
    amm = otpd.amm(account)
    binds = len(smsc.events("bind"))
    smsc.steer(drop_link=True)
    to = new_number()
    send(otpd, amm, to, "Code ${verify_code}")
    wait_for(lambda: submits_to(smsc, to), timeout=30)
    assert len(smsc.events("bind")) > binds
    assert len(submits_to(smsc, to)) == 1
    assert otpd.metric("otpd_smpp_bound") == 1, "bound again"


def console_overview(otpd):
    password = (otpd.data_dir / "console.password").read_text().strip()
    answer = requests.get(f"{otpd.url}/console", auth=("operator", password), timeout=10)
    assert answer.status_code == 200
    return answer.text


@pytest.fixture
def refusing(tmp_path):
    """A fresh otpd pointed at a fresh SMSC that refuses its binds until told otherwise."""
    (tmp_path / "smsc").mkdir()
    (tmp_path / "otpd").mkdir()
    smsc = Smsc(tmp_path / "smsc")
    smsc.steer(refuse_binds=True)
    otpd = Otpd(tmp_path / "otpd", sms=smsc.url)
    otpd.start()
    yield smsc, otpd
    otpd.stop()
    smsc.stop()


def test_refused_binds_then_recovery(refusing):
    smsc, otpd = refusing
    account = otpd.create_account("refused")
    amm = otpd.amm(account)
    short_lived = new_number()
    send(otpd, amm, short_lived, "Code ${verify_code}", ttl="10")
    valid = [new_number() for _ in range(3)]
    for to in valid:
        send(otpd, amm, to, "Code ${verify_code}", ttl="300")
    time.sleep(11)
    assert smsc.events("bind_refused"), "otpd kept trying to bind"
    assert not smsc.events("submit_sm")
    assert otpd.metric("otpd_smpp_bound") == 0
    assert otpd.metric("otpd_smpp_bind_failures_total") >= len(smsc.events("bind_refused")) - 1
    assert otpd.metric("otpd_smpp_bind_failures_total") >= 2
    assert "<b class=\"warn\">down</b>this node's link to the SMSC" in console_overview(otpd)
    smsc.steer(refuse_binds=False)
    for to in valid:
        wait_for(lambda to=to: submits_to(smsc, to), timeout=60)
    assert otpd.metric("otpd_smpp_bound") == 1
    assert "<b>up</b>this node's link to the SMSC" in console_overview(otpd)
    time.sleep(1)
    for to in valid:
        assert len(submits_to(smsc, to)) == 1, "delivered exactly once"
    assert not submits_to(smsc, short_lived), "an expired code is never sent"


def test_sigterm_leaves_undelivered_messages_for_the_next_start(refusing):
    smsc, otpd = refusing
    amm = otpd.amm(otpd.create_account("graceful"))
    to = new_number()
    send(otpd, amm, to, "Code ${verify_code}")
    otpd.process.terminate()
    assert otpd.process.wait(timeout=15) == 0, "a clean exit on SIGTERM"
    assert "otpd stopped" in otpd.logs()
    assert not submits_to(smsc, to)
    smsc.steer(refuse_binds=False)
    otpd.start()
    wait_for(lambda: submits_to(smsc, to), timeout=30)
    assert len(submits_to(smsc, to)) == 1
