"""Amazon Pinpoint OTP through the AWS CLI, as a shell user would drive it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

AWS = shutil.which("aws", path=str(Path(sys.executable).parent)) or shutil.which("aws")


def aws(otpd, account, *args):
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": account["access_key_id"],
        "AWS_SECRET_ACCESS_KEY": account["secret_access_key"],
        "AWS_DEFAULT_REGION": "eu-central-1",
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }
    return subprocess.run(
        [AWS, "pinpoint", *args, "--endpoint-url", otpd.url, "--output", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_send_and_verify_with_the_aws_cli(otpd, account, app_id):
    assert AWS, "the AWS CLI is not installed"
    to = "+393489990001"
    sent = aws(
        otpd,
        account,
        "send-otp-message",
        "--application-id",
        app_id,
        "--send-otp-message-request-parameters",
        json.dumps(
            {
                "Channel": "SMS",
                "BrandName": "CliCo",
                "OriginationIdentity": "CliCo",
                "DestinationIdentity": to,
                "ReferenceId": "cli",
                "CodeLength": 5,
            }
        ),
    )
    assert sent.returncode == 0, sent.stderr
    response = json.loads(sent.stdout)["MessageResponse"]
    assert response["Result"][to]["DeliveryStatus"] == "SUCCESSFUL"
    code = otpd.last_code(to)
    assert len(code) == 5

    def check(otp):
        result = aws(
            otpd,
            account,
            "verify-otp-message",
            "--application-id",
            app_id,
            "--verify-otp-message-request-parameters",
            json.dumps({"DestinationIdentity": to, "Otp": otp, "ReferenceId": "cli"}),
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["VerificationResponse"]["Valid"]

    assert check(code) is True
    assert check(code) is False


def test_cli_errors_name_the_exception(otpd, account):
    result = aws(
        otpd,
        account,
        "send-otp-message",
        "--application-id",
        "f" * 32,
        "--send-otp-message-request-parameters",
        json.dumps(
            {
                "Channel": "SMS",
                "BrandName": "x",
                "OriginationIdentity": "x",
                "DestinationIdentity": "+393489990002",
                "ReferenceId": "cli",
            }
        ),
    )
    assert result.returncode != 0
    assert "NotFoundException" in result.stderr
