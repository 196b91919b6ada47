"""--sms-countries: codes go only to numbers of the listed countries, and a send elsewhere is
refused in its dialect's own format before anything is stored, charged or sent."""

import subprocess

import pytest

from conftest import BIN, Otpd, pinpoint_send


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Otpd(tmp_path_factory.mktemp("otpd-countries"))
    server.env = {"OTPD_SMS_COUNTRIES": "it, gb"}
    server.start()
    yield server
    server.stop()


def test_the_log_names_the_countries(server):
    assert "SMS go only to numbers of these countries countries=GB,IT" in server.logs()


def test_listed_countries_are_served(server):
    account = server.create_account("listed")
    amm = server.amm(account)
    sent = amm.post(f"{server.url}/sms/v2/verify/send", data={"to": "393486660001", "text": "Code ${verify_code}"})
    assert sent.status_code == 200, sent.text
    client = server.pinpoint(account)
    to = "+447400660002"
    result = pinpoint_send(client, server.create_app(account), to)
    assert result["MessageResponse"]["Result"][to]["DeliveryStatus"] == "SUCCESSFUL"


def test_an_amm_send_elsewhere_is_bad_to_and_costs_nothing(server):
    account = server.create_account("elsewhere", credits=5)
    amm = server.amm(account)
    for to in ["4915123456789", "12125550123", "14165550123"]:
        sent = amm.post(f"{server.url}/sms/v2/verify/send", data={"to": to, "text": "Code ${verify_code}"})
        assert sent.status_code == 400, (to, sent.text)
        assert sent.json() == {"errorMsg": "BAD_TO"}
        assert not any(message["to"] == f"+{to}" for message in server.messages())
    assert server.account_info(account["access_key_id"])["credits"] == 5


def test_a_pinpoint_send_elsewhere_is_a_bad_request(server):
    account = server.create_account("elsewhere-pinpoint")
    client = server.pinpoint(account)
    app_id = server.create_app(account)
    with pytest.raises(client.exceptions.BadRequestException) as raised:
        pinpoint_send(client, app_id, "+4915123456780")
    assert "country this server sends no SMS to (DE)" in raised.value.response["Error"]["Message"]
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_refusals_are_counted_as_their_own_result(server):
    account = server.create_account("counted")
    server.amm(account).post(f"{server.url}/sms/v2/verify/send", data={"to": "33612345678", "text": "${verify_code}"})
    assert server.metric("otpd_otp_sends_total", dialect="amm", result="country_not_allowed") >= 1


def test_an_unknown_country_stops_serve_with_a_usage_error(tmp_path):
    result = subprocess.run(
        [BIN, "--data-dir", str(tmp_path), "serve", "--listen", "127.0.0.1:0", "--sms-countries", "IT,XX"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert '"XX" is not a country' in result.stderr
