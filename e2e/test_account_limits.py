"""An account's own limits (`accounts create/limit --max-sms-per-hour --countries`): SMS parts
in any 60 minutes, and the countries its codes may go to. A send past either is refused in its
dialect's own format before anything is stored, charged or sent."""

import json

import pytest

from conftest import pinpoint_send, wait_for

TEXT = "Code ${verify_code}"


def create(otpd, name, *options):
    return json.loads(otpd.cli("accounts", "create", name, *options).stdout)


def limit(otpd, account, *options):
    return json.loads(otpd.cli("accounts", "limit", account["access_key_id"], *options).stdout)


def amm_send(otpd, account, to, **extra):
    return otpd.amm(account).post(f"{otpd.url}/sms/v2/verify/send", data={"to": to, "text": TEXT, **extra})


def sends_counted(otpd, dialect, result):
    return otpd.metric("otpd_otp_sends_total", dialect=dialect, result=result)


def test_accounts_show_their_limits(otpd):
    limited = create(otpd, "limited", "--max-sms-per-hour", "30", "--countries", "it, gb")
    assert limited["max_sms_per_hour"] == 30
    assert limited["countries"] == ["GB", "IT"]
    plain = create(otpd, "plain")
    assert plain["max_sms_per_hour"] is None
    assert plain["countries"] is None
    assert "sms_in_last_hour" not in otpd.account_info(plain["access_key_id"]), "only under a limit"
    listed = otpd.account_info(limited["access_key_id"])
    assert (listed["max_sms_per_hour"], listed["countries"]) == (30, ["GB", "IT"])


def test_an_amm_account_past_its_hour_gets_antispam_and_pays_nothing_more(otpd):
    account = create(otpd, "hourly-amm", "--credits", "10", "--max-sms-per-hour", "3")
    for n in range(3):
        sent = amm_send(otpd, account, f"39348661000{n}")
        assert sent.status_code == 200, sent.text
    refused = amm_send(otpd, account, "393486610009")
    assert refused.status_code == 400
    assert refused.json() == {"errorMsg": "ANTISPAM"}
    # The parts stay counted for 60 to 65 minutes (5-minute buckets).
    assert 3500 < int(refused.headers["Retry-After"]) <= 3900
    assert not any(message["to"] == "+393486610009" for message in otpd.messages())
    listed = otpd.account_info(account["access_key_id"])
    assert (listed["credits"], listed["sms_in_last_hour"]) == (7, 3)
    # A sandbox send reaches no carrier, costs nothing and is not counted.
    sandbox = amm_send(otpd, account, "393486610008", sandbox="true")
    assert sandbox.status_code == 200, sandbox.text
    assert sends_counted(otpd, "amm", "account_hourly_limit") >= 1


def test_a_pinpoint_account_past_its_hour_gets_too_many_requests(otpd):
    account = create(otpd, "hourly-pinpoint", "--max-sms-per-hour", "2")
    client = otpd.pinpoint(account)
    app_id = otpd.create_app(account)
    pinpoint_send(client, app_id, "+393486620001")
    pinpoint_send(client, app_id, "+393486620002")
    with pytest.raises(client.exceptions.TooManyRequestsException) as raised:
        pinpoint_send(client, app_id, "+393486620003")
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert "SMS limit for the last hour" in raised.value.response["Error"]["Message"]
    retry_after = int(raised.value.response["ResponseMetadata"]["HTTPHeaders"]["retry-after"])
    assert 3500 < retry_after <= 3900
    assert sends_counted(otpd, "pinpoint", "account_hourly_limit") >= 1
    # Another account's hour is its own.
    other = otpd.create_account("unlimited")
    pinpoint_send(otpd.pinpoint(other), otpd.create_app(other), "+393486620003")


def test_an_account_sends_only_to_its_countries(otpd):
    account = create(otpd, "italy-only", "--countries", "IT")
    assert amm_send(otpd, account, "393486630001").status_code == 200
    refused = amm_send(otpd, account, "4915123456001")
    assert refused.status_code == 400
    assert refused.json() == {"errorMsg": "BAD_TO"}
    client = otpd.pinpoint(account)
    with pytest.raises(client.exceptions.BadRequestException) as raised:
        pinpoint_send(client, otpd.create_app(account), "+447400630002")
    assert "country this account may not send SMS to (GB)" in raised.value.response["Error"]["Message"]
    assert not any(message["to"] in ("+4915123456001", "+447400630002") for message in otpd.messages())
    assert sends_counted(otpd, "amm", "account_country_not_allowed") >= 1
    assert sends_counted(otpd, "pinpoint", "account_country_not_allowed") >= 1
    # The server itself sends anywhere: another account's codes reach Germany.
    other = otpd.create_account("anywhere")
    assert amm_send(otpd, other, "4915123456001").status_code == 200


def test_limit_changes_an_account_in_place(otpd):
    account = otpd.create_account("changing")
    assert amm_send(otpd, account, "4915123456002").status_code == 200
    changed = limit(otpd, account, "--countries", "IT", "--max-sms-per-hour", "100")
    assert (changed["countries"], changed["max_sms_per_hour"]) == (["IT"], 100)
    assert "secret_access_key" not in changed
    # A running server applies it within its two-second account lookup cache.
    wait_for(lambda: amm_send(otpd, account, "4915123456003").status_code == 400, timeout=10)
    # One option changes only its own limit.
    kept = limit(otpd, account, "--max-sms-per-hour", "none")
    assert (kept["countries"], kept["max_sms_per_hour"]) == (["IT"], None)
    lifted = limit(otpd, account, "--countries", "any")
    assert (lifted["countries"], lifted["max_sms_per_hour"]) == (None, None)
    wait_for(lambda: amm_send(otpd, account, "4915123456004").status_code == 200, timeout=10)


def test_an_hourly_limit_set_later_counts_from_then(otpd):
    account = otpd.create_account("later")
    for n in range(3):
        assert amm_send(otpd, account, f"39348664000{n}").status_code == 200
    limit(otpd, account, "--max-sms-per-hour", "1")
    assert amm_send(otpd, account, "393486640005").status_code == 200
    assert amm_send(otpd, account, "393486640006").json() == {"errorMsg": "ANTISPAM"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["accounts", "limit", "{key}"], "name a limit to change"),
        (["accounts", "limit", "{key}", "--max-sms-per-hour", "0"], "use a number from 1"),
        (["accounts", "limit", "{key}", "--max-sms-per-hour", "lots"], "use a number from 1"),
        (["accounts", "limit", "{key}", "--countries", "IT,XX"], '"XX" is not a country'),
        (["accounts", "limit", "{key}", "--countries", ","], "name at least one country"),
        (["accounts", "limit", "OTPDNOSUCHKEY0000000", "--countries", "IT"], "no account has the access key id"),
        (["accounts", "create", "bad", "--max-sms-per-hour", "0"], "use a number from 1"),
        (["accounts", "create", "bad", "--countries", "Italy"], "\"Italy\" is not a country"),
    ],
)
def test_bad_limits_are_usage_errors(otpd, args, message):
    account = otpd.create_account("usage")
    result = otpd.cli(*[arg.format(key=account["access_key_id"]) for arg in args], check=False)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
