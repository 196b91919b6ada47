"""Amazon Pinpoint OTP through AWS's Rust SDK (aws-sdk-pinpoint), pointed at otpd with endpoint_url.

`pinpoint-rust-sdk` (e2e/rust-sdk) makes one SDK call a run and prints what the SDK parsed out of
otpd's answer, or the name of the error variant it raised; the test script builds it.
"""

import itertools
import json
import os
import re
import subprocess

from conftest import ROOT

RUST_SDK = os.environ.get("OTPD_RUST_SDK_BIN", str(ROOT / "target" / "debug" / "pinpoint-rust-sdk"))

_numbers = itertools.count(2000000)


def new_number():
    """A fresh Italian mobile number for each send, so anti-spam windows never collide."""
    return f"+39348{next(_numbers):07d}"


def rust_sdk(otpd, account, *args, secret=None):
    """Runs one SDK call: (exit code, the JSON it printed). 0 is an output, 1 a service error."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "AWS_ACCESS_KEY_ID": account["access_key_id"],
        "AWS_SECRET_ACCESS_KEY": secret or account["secret_access_key"],
        "AWS_REGION": "ap-southeast-2",
    }
    result = subprocess.run(
        [RUST_SDK, "--endpoint-url", otpd.url, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode in (0, 1), f"the SDK call failed ({result.returncode}): {result.stderr}"
    return result.returncode, json.loads(result.stdout)


def send(otpd, account, app_id, to, **parameters):
    body = {
        "Channel": "SMS",
        "BrandName": "RustCo",
        "OriginationIdentity": "RustCo",
        "DestinationIdentity": to,
        "ReferenceId": "rust",
        **parameters,
    }
    return rust_sdk(
        otpd, account, "send-otp-message", "--application-id", app_id, "--parameters", json.dumps(body)
    )


def verify(otpd, account, app_id, to, otp, reference="rust"):
    body = {"DestinationIdentity": to, "Otp": otp, "ReferenceId": reference}
    return rust_sdk(
        otpd, account, "verify-otp-message", "--application-id", app_id, "--parameters", json.dumps(body)
    )


def valid(otpd, account, app_id, to, otp):
    status, answer = verify(otpd, account, app_id, to, otp)
    assert status == 0, answer
    return answer["VerificationResponse"]["Valid"]


def error_of(call):
    """The SDK's error variant and HTTP status of a call that must fail."""
    status, answer = call
    assert status == 1, answer
    assert answer["Code"] == answer["Error"], answer
    assert answer["Message"], answer
    return answer["Error"], answer["Status"]


def test_send_and_verify_through_the_rust_sdk(otpd, account, app_id):
    to = new_number()
    status, answer = send(otpd, account, app_id, to, CodeLength=7, Language="fr-FR", ValidityPeriod=5)
    assert status == 0, answer
    response = answer["MessageResponse"]
    assert response["ApplicationId"] == app_id
    assert response["RequestId"]
    result = response["Result"][to]
    assert result["DeliveryStatus"] == "SUCCESSFUL"
    assert result["StatusCode"] == 200
    assert re.fullmatch(r"[0-9a-f]{32}", result["MessageId"])
    code = otpd.last_code(to)
    assert len(code) == 7
    wrong = "1234567" if code != "1234567" else "7654321"
    assert valid(otpd, account, app_id, to, wrong) is False
    assert valid(otpd, account, app_id, to, code) is True
    assert valid(otpd, account, app_id, to, code) is False


def test_a_code_past_its_attempts_is_dead_through_the_rust_sdk(otpd, account, app_id):
    to = new_number()
    status, answer = send(otpd, account, app_id, to, AllowedAttempts=1)
    assert status == 0, answer
    code = otpd.last_code(to)
    wrong = "000000" if code != "000000" else "111111"
    assert valid(otpd, account, app_id, to, wrong) is False
    assert valid(otpd, account, app_id, to, code) is False


def test_applications_through_the_rust_sdk(otpd, account):
    status, created = rust_sdk(otpd, account, "create-app", "--name", "rust-shop")
    assert status == 0, created
    app = created["ApplicationResponse"]
    assert re.fullmatch(r"[0-9a-f]{32}", app["Id"])
    assert app["Name"] == "rust-shop"
    assert app["Arn"].endswith(f":apps/{app['Id']}")
    assert app["CreationDate"]

    status, got = rust_sdk(otpd, account, "get-app", "--application-id", app["Id"])
    assert status == 0, got
    assert got["ApplicationResponse"] == app

    status, listed = rust_sdk(otpd, account, "get-apps")
    assert status == 0, listed
    assert app["Id"] in [item["Id"] for item in listed["ApplicationsResponse"]["Item"]]

    status, deleted = rust_sdk(otpd, account, "delete-app", "--application-id", app["Id"])
    assert status == 0, deleted
    assert deleted["ApplicationResponse"]["Id"] == app["Id"]
    assert error_of(rust_sdk(otpd, account, "get-app", "--application-id", app["Id"])) == (
        "NotFoundException",
        404,
    )


def test_the_rust_sdk_raises_each_error_as_its_own_variant(otpd, account, app_id):
    assert error_of(send(otpd, account, app_id, "12")) == ("BadRequestException", 400)
    assert error_of(send(otpd, account, app_id, new_number(), CodeLength=99)) == ("BadRequestException", 400)
    assert error_of(send(otpd, account, "0" * 32, new_number())) == ("NotFoundException", 404)
    assert error_of(verify(otpd, account, "0" * 32, new_number(), "123456")) == ("NotFoundException", 404)
    assert error_of(rust_sdk(otpd, account, "get-apps", secret="not-the-secret")) == ("ForbiddenException", 403)
    assert error_of(send(otpd, account, app_id, new_number(), EntityId="x" * 70_000)) == (
        "PayloadTooLargeException",
        413,
    )


def test_eleven_sends_to_one_number_in_an_hour_are_too_many_for_the_rust_sdk(otpd, account, app_id):
    to = new_number()
    for _ in range(10):
        status, answer = send(otpd, account, app_id, to)
        assert status == 0, answer
    assert error_of(send(otpd, account, app_id, to)) == ("TooManyRequestsException", 429)
