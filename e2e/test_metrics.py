"""GET /metrics, read with the Prometheus project's own Python parser: what the traffic of this
module did, counted exactly, and nothing in it that names a caller, a number or a code."""

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import BACKEND, Otpd, pinpoint_send, wait_for

PINPOINT_TO = "+393481230001"
AMM_TO = "393471230002"
ANTISPAM_TO = "393471230003"
POOR_TO = "393471230004"


def scrape(server):
    response = requests.get(f"{server.url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return response.text


def samples(text):
    """Every sample as {(name, frozenset(labels)): value}, through the reference parser."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found, name, **labels):
    return found.get((name, frozenset(labels.items())), 0.0)


def pinpoint_verify(client, app_id, to, otp):
    return client.verify_otp_message(
        ApplicationId=app_id,
        VerifyOTPMessageRequestParameters={"DestinationIdentity": to, "Otp": otp, "ReferenceId": "login"},
    )["VerificationResponse"]["Valid"]


@pytest.fixture(scope="module")
def traffic(otpd, account, app_id, client):
    """A known mix of requests on a fresh server, and the codes it sent."""
    pinpoint_send(client, app_id, PINPOINT_TO)
    code = otpd.last_code(PINPOINT_TO)
    wrong = ("1" if code[0] != "1" else "2") + code[1:]
    assert pinpoint_verify(client, app_id, PINPOINT_TO, wrong) is False
    assert pinpoint_verify(client, app_id, PINPOINT_TO, code) is True
    assert pinpoint_verify(client, app_id, PINPOINT_TO, code) is False

    amm = otpd.amm(account)
    base = f"{otpd.url}/sms/v2/verify"
    verify_id = amm.post(f"{base}/send", data={"to": AMM_TO, "text": "Code ${verify_code}"}).json()["verify_id"]
    amm_code = otpd.last_code("+" + AMM_TO)
    checked = amm.get(f"{base}/check", params={"verify_id": verify_id, "verify_code": amm_code})
    assert checked.json()["verify_status"] == "VERIFIED"
    sandbox = amm.post(f"{base}/send", data={"to": AMM_TO, "text": "Code ${verify_code}", "sandbox": "true"})
    assert sandbox.status_code == 200
    statuses = [
        amm.post(f"{base}/send", data={"to": ANTISPAM_TO, "text": "Code ${verify_code}"}).status_code
        for _ in range(11)
    ]
    assert statuses == [200] * 10 + [400]
    too_long = amm.post(f"{base}/send", data={"to": AMM_TO, "text": "x" * 3000 + " ${verify_code}"})
    assert too_long.status_code == 400 and too_long.json()["errorMsg"] == "BAD_TEXT", too_long.text
    poor = otpd.amm(otpd.create_account("poor", credits=1))
    credit_statuses = [
        poor.post(f"{base}/send", data={"to": to, "text": "Code ${verify_code}"}).status_code
        for to in (POOR_TO, POOR_TO.replace("1", "2"))
    ]
    assert credit_statuses == [200, 400]
    assert requests.get(f"{otpd.url}/no/such/page/{AMM_TO}", timeout=10).status_code == 404
    return {"codes": [code, amm_code], "delivered": 13}


def test_sends_and_checks_are_counted_by_dialect_and_result(otpd, traffic):
    found = samples(scrape(otpd))
    sends = "otpd_otp_sends_total"
    assert value(found, sends, dialect="pinpoint", result="accepted") == 1
    assert value(found, sends, dialect="amm", result="accepted") == 12
    assert value(found, sends, dialect="amm", result="sandbox") == 1
    assert value(found, sends, dialect="amm", result="antispam") == 1
    assert value(found, sends, dialect="amm", result="bad_message") == 1
    assert value(found, sends, dialect="amm", result="no_credit") == 1
    checks = "otpd_otp_checks_total"
    assert value(found, checks, dialect="pinpoint", outcome="mismatch") == 1
    assert value(found, checks, dialect="pinpoint", outcome="verified") == 1
    assert value(found, checks, dialect="pinpoint", outcome="not_found") == 1, "a used code has no live key"
    assert value(found, checks, dialect="amm", outcome="verified") == 1


def test_sms_parts_and_delivery_attempts_are_counted(otpd, traffic):
    found = samples(scrape(otpd))
    assert value(found, "otpd_sms_parts_total", dialect="pinpoint") == 1
    assert value(found, "otpd_sms_parts_total", dialect="amm") == 12, "sandbox sends reach no carrier"
    assert value(found, "otpd_sms_attempts_total", result="accepted", status="SUCCESSFUL") == traffic["delivered"]


def test_the_outbox_is_empty_once_every_message_is_delivered(otpd, traffic):
    def settled():
        found = samples(scrape(otpd))
        return found if value(found, "otpd_outbox_pending_messages") == 0 else None

    found = wait_for(settled)
    assert value(found, "otpd_outbox_oldest_pending_age_seconds") == 0
    assert value(found, "otpd_database_up") == 1


def test_requests_are_counted_by_route_template_and_status(otpd, traffic):
    found = samples(scrape(otpd))
    requests_total = "otpd_http_requests_total"
    otp = "/v1/apps/{application_id}/otp"
    verify = "/v1/apps/{application_id}/verify-otp"
    assert value(found, requests_total, route=otp, status="200") == 1
    assert value(found, requests_total, route=verify, status="200") == 3
    assert value(found, requests_total, route="/sms/v2/verify/send", status="200") == 13
    assert value(found, requests_total, route="/sms/v2/verify/send", status="400") == 3
    assert value(found, requests_total, route="unmatched", status="404") == 1
    duration = "otpd_http_request_duration_seconds"
    assert value(found, duration + "_count", route=verify) == 3
    assert value(found, duration + "_bucket", route=verify, le="+Inf") == 3
    assert 0 < value(found, duration + "_sum", route=verify) < 3
    assert value(found, "otpd_build_info", version="0.1.0") == 1


@pytest.mark.skipif(BACKEND != "sqlite", reason="the SQLite writer's own metrics")
def test_the_sqlite_writer_shows_its_group_commits(otpd, traffic):
    found = samples(scrape(otpd))
    commits = value(found, "otpd_sqlite_commit_size_count")
    grouped = value(found, "otpd_sqlite_commit_size_sum")
    assert commits > 0 and grouped >= commits, "every commit carries at least one request"
    assert value(found, "otpd_sqlite_commit_size_bucket", le="+Inf") == commits
    assert value(found, "otpd_sqlite_commit_duration_seconds_count") == commits
    assert 0 < value(found, "otpd_sqlite_commit_duration_seconds_sum") < commits


@pytest.mark.skipif(BACKEND != "postgres", reason="the PostgreSQL store's own metrics")
def test_the_postgres_store_shows_its_groups(otpd, traffic):
    found = samples(scrape(otpd))
    accepted = sum(
        count for (name, labels), count in found.items() if name == "otpd_otp_sends_total" and ("result", "accepted") in labels
    )
    for statement in ["send", "check"]:
        groups = value(found, "otpd_postgres_group_size_count", statement=statement)
        grouped = value(found, "otpd_postgres_group_size_sum", statement=statement)
        assert groups > 0 and grouped >= groups, "every group carries at least one request"
        assert value(found, "otpd_postgres_group_size_bucket", statement=statement, le="+Inf") == groups
        assert value(found, "otpd_postgres_group_duration_seconds_count", statement=statement) == groups
        assert 0 < value(found, "otpd_postgres_group_duration_seconds_sum", statement=statement) < groups
    assert value(found, "otpd_postgres_group_size_sum", statement="send") >= accepted > 0


def test_nothing_names_a_caller_a_number_a_code_or_a_path(otpd, account, app_id, traffic):
    # Only names, labels and help texts can name anything; a sample's value is a number that a
    # 4-digit code may well appear in by chance (the start time 1796322348.4073555 held "3555").
    named = "\n".join(
        line if line.startswith("#") else line.rsplit(" ", 1)[0]
        for line in scrape(otpd).splitlines()
    )
    secrets = [account["access_key_id"], account["secret_access_key"], app_id, *traffic["codes"]]
    numbers = [PINPOINT_TO, AMM_TO, ANTISPAM_TO, POOR_TO, "/no/such/page"]
    for secret in secrets + numbers:
        assert secret not in named


def test_failed_deliveries_are_counted_as_retries(tmp_path):
    """An SMS gateway that refuses connections: the attempt is counted as one to retry."""
    server = Otpd(tmp_path, sms="http://127.0.0.1:9/sms")
    server.start()
    try:
        assert "reach no phone" not in server.logs(), "a provider's URL is no development sink"
        server.amm_send(server.create_account(), AMM_TO)

        def retried():
            found = samples(scrape(server))
            attempts = {
                dict(labels)["result"]: count
                for (name, labels), count in found.items()
                if name == "otpd_sms_attempts_total"
            }
            return attempts if attempts.get("retry") else None

        attempts = wait_for(retried)
        assert attempts == {"retry": 1.0}
        found = samples(scrape(server))
        assert value(found, "otpd_outbox_pending_messages") == 1, "it waits for its next attempt"
        assert 0 <= value(found, "otpd_outbox_oldest_pending_age_seconds") < 60
    finally:
        server.stop()


def test_the_counters_alerts_watch_are_there_at_zero_before_anything_happens(tmp_path):
    """A series that appears only with its first event hides that event from `increase()`: a
    fresh server publishes the sends, checks and parts by every label, the outcomes given up
    on and the timed-out connections, all at 0."""
    server = Otpd(tmp_path)
    server.start()
    try:
        found = samples(scrape(server))
        watched = [
            ("otpd_otp_sends_total", {"dialect": "amm", "result": "antispam"}),
            ("otpd_otp_sends_total", {"dialect": "pinpoint", "result": "store_error"}),
            ("otpd_otp_checks_total", {"dialect": "amm", "outcome": "rate_limited"}),
            ("otpd_otp_checks_total", {"dialect": "pinpoint", "outcome": "mismatch"}),
            ("otpd_sms_parts_total", {"dialect": "pinpoint"}),
            ("otpd_sms_outcomes_unrecorded_total", {}),
            ("otpd_http_connections_timed_out_total", {}),
        ]
        for name, labels in watched:
            assert found.get((name, frozenset(labels.items()))) == 0.0, (name, labels)
        sends = [labels for (name, labels) in found if name == "otpd_otp_sends_total"]
        checks = [labels for (name, labels) in found if name == "otpd_otp_checks_total"]
        assert len(sends) == 2 * 10 and len(checks) == 2 * 10
        assert not any(name == "otpd_tls_handshakes_failed_total" for (name, _) in found), "no TLS here"
        assert not any(name == "otpd_sms_attempts_total" for (name, _) in found), "no attempt yet"
    finally:
        server.stop()
