"""The durable outbox: what got a 200 is delivered, even across a kill -9."""

import json
import signal
import threading
import time

from conftest import Otpd


def test_delivery_is_visible_in_search_and_the_message_record(otpd, account):
    amm = otpd.amm(account)
    response = amm.post(f"{otpd.url}/sms/v2/verify/send", data={"to": "393471110001", "text": "Code ${verify_code}"})
    verify_id = response.json()["verify_id"]
    found = amm.get(f"{otpd.url}/sms/v2/verify/search", params={"verify_id": verify_id}).json()
    assert found["delivery_status"] == "SUCCESSFUL"
    assert found["delivery_date"] >= found["date_submit"]
    record = json.loads(otpd.cli("messages", "show", found["id_sms"]).stdout)
    assert record["state"] == "sent" and record["attempts"] == 1
    assert record["verify_id"] == verify_id
    assert "text" not in record
    assert otpd.messages()[-1]["message_id"] == found["id_sms"]


def test_every_accepted_send_survives_kill_9(tmp_path):
    server = Otpd(tmp_path)
    # On a shared database the dead process's claims are not released at start (other nodes
    # may hold theirs): they run out with the lease, short here.
    server.env["OTPD_OUTBOX_LEASE_SECONDS"] = "5"
    server.start()
    account = server.create_account("crash")
    amm = server.amm(account)
    accepted, stop = [], threading.Event()

    def sender(worker):
        n = 0
        while not stop.is_set():
            n += 1
            try:
                response = amm.post(
                    f"{server.url}/sms/v2/verify/send",
                    data={"to": f"3934{worker}{n:07d}", "text": "Code ${verify_code}", "ttl": "600"},
                    timeout=5,
                )
            except Exception:
                continue
            if response.status_code == 200:
                accepted.append(response.json()["verify_id"])

    threads = [threading.Thread(target=sender, args=(w,)) for w in range(1, 9)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    stop.set()
    for thread in threads:
        thread.join()
    assert len(accepted) > 20

    server.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            delivered = {message["message_id"] for message in server.messages()}
            missing = []
            for verify_id in accepted:
                found = amm.get(f"{server.url}/sms/v2/verify/search", params={"verify_id": verify_id}).json()
                if found["id_sms"] not in delivered:
                    missing.append(verify_id)
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert not missing, f"{len(missing)} of {len(accepted)} accepted sends were never delivered"
    finally:
        server.stop()
