"""Amazon Pinpoint OTP against the real boto3 SDK: every flow and every error as its own exception."""

import itertools
import json

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import pytest
import requests

_numbers = itertools.count(1000000)


def new_number():
    """A fresh Italian mobile number for each test, so anti-spam windows never collide."""
    return f"+39348{next(_numbers):07d}"


def send(client, app_id, to, reference="login", **extra):
    parameters = {
        "Channel": "SMS",
        "BrandName": "Acme",
        "OriginationIdentity": "+12065550100",
        "DestinationIdentity": to,
        "ReferenceId": reference,
        **extra,
    }
    return client.send_otp_message(ApplicationId=app_id, SendOTPMessageRequestParameters=parameters)


def verify(client, app_id, to, otp, reference="login"):
    response = client.verify_otp_message(
        ApplicationId=app_id,
        VerifyOTPMessageRequestParameters={"DestinationIdentity": to, "Otp": otp, "ReferenceId": reference},
    )
    return response["VerificationResponse"]["Valid"]


def wrong(code):
    return ("1" if code[0] != "1" else "2") + code[1:]


def signed_request(otpd, account, method, path, body=b"", headers=None):
    """A request signed by botocore's own SigV4 signer, sent with requests (for what boto3 won't send)."""
    request = botocore.awsrequest.AWSRequest(method=method, url=otpd.url + path, data=body, headers=headers or {})
    credentials = botocore.credentials.Credentials(account["access_key_id"], account["secret_access_key"])
    botocore.auth.SigV4Auth(credentials, "mobiletargeting", "us-east-1").add_auth(request)
    return requests.request(method, otpd.url + path, data=body, headers=dict(request.headers))


def test_send_answers_a_message_response_and_sends_the_aws_text(otpd, client, app_id):
    to = new_number()
    response = send(client, app_id, to)["MessageResponse"]
    assert response["ApplicationId"] == app_id
    assert response["RequestId"]
    result = response["Result"][to]
    assert result["DeliveryStatus"] == "SUCCESSFUL"
    assert result["StatusCode"] == 200
    message = otpd.messages()[-1]
    assert message["message_id"] == result["MessageId"]
    assert message["to"] == to
    assert message["from"] == "+12065550100"
    code = otpd.last_code(to)
    assert len(code) == 6
    assert message["text"] == f"This is your One Time Password: {code} from Acme"
    assert message["encoding"] == "GSM7" and message["parts"] == 1


def test_wrong_code_then_right_code_then_reuse(otpd, client, app_id):
    to = new_number()
    send(client, app_id, to)
    code = otpd.last_code(to)
    assert verify(client, app_id, to, wrong(code)) is False
    assert verify(client, app_id, to, code) is True
    assert verify(client, app_id, to, code) is False


def test_a_resend_kills_the_earlier_code(otpd, client, app_id):
    to = new_number()
    send(client, app_id, to)
    first = otpd.last_code(to)
    send(client, app_id, to)
    second = otpd.last_code(to)
    if first != second:
        assert verify(client, app_id, to, first) is False
    assert verify(client, app_id, to, second) is True


def test_attempts_exhausted_kills_even_the_right_code(otpd, client, app_id):
    to = new_number()
    send(client, app_id, to, AllowedAttempts=2)
    code = otpd.last_code(to)
    assert verify(client, app_id, to, wrong(code)) is False
    assert verify(client, app_id, to, wrong(code)) is False
    assert verify(client, app_id, to, code) is False


def test_reference_and_destination_must_match(otpd, client, app_id):
    to = new_number()
    send(client, app_id, to, reference="ref-a")
    code = otpd.last_code(to)
    assert verify(client, app_id, to, code, reference="ref-b") is False
    assert verify(client, app_id, new_number(), code, reference="ref-a") is False
    assert verify(client, app_id, to, code, reference="ref-a") is True


def test_code_length_and_language(otpd, client, app_id):
    to = new_number()
    send(client, app_id, to, CodeLength=8, Language="de-DE")
    code = otpd.last_code(to)
    assert len(code) == 8
    assert otpd.messages()[-1]["text"] == f"Dies ist Ihr Einmalpasswort: {code} von Acme"
    to = new_number()
    send(client, app_id, to, Language="ja-JP")
    assert otpd.messages()[-1]["encoding"] == "UCS2"


@pytest.mark.parametrize(
    "field",
    [
        {"CodeLength": 4},
        {"CodeLength": 9},
        {"ValidityPeriod": 4},
        {"ValidityPeriod": 61},
        {"AllowedAttempts": 0},
        {"AllowedAttempts": 6},
        {"Channel": "EMAIL"},
        {"DestinationIdentity": "393481234567"},
        {"DestinationIdentity": "+390612345678"},
        {"ReferenceId": "r" * 49},
        {"Language": "it-IT"},
        {"BrandName": "b" * 21},
        {"OriginationIdentity": "NotASenderId!"},
    ],
)
def test_out_of_range_fields_are_bad_requests(client, app_id, field):
    parameters = {"DestinationIdentity": new_number(), **field}
    to = parameters.pop("DestinationIdentity")
    with pytest.raises(client.exceptions.BadRequestException) as raised:
        send(client, app_id, to, **parameters)
    error = raised.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error["Error"]["Message"]


def test_verify_requires_its_fields(client, app_id):
    with pytest.raises(client.exceptions.BadRequestException):
        verify(client, app_id, "not-a-number", "123456")
    with pytest.raises(client.exceptions.BadRequestException):
        verify(client, app_id, new_number(), "", reference="login")


def test_a_reference_id_with_a_control_character_is_a_bad_request(client, app_id):
    # On PostgreSQL a NUL used to reach the database, whose text cannot hold one: a 500.
    for reference in ["log\u0000in", "log\nin"]:
        with pytest.raises(client.exceptions.BadRequestException) as raised:
            send(client, app_id, new_number(), reference=reference)
        assert "none of them a control character" in raised.value.response["Error"]["Message"]
        with pytest.raises(client.exceptions.BadRequestException):
            verify(client, app_id, new_number(), "123456", reference=reference)


def test_wrong_secret_is_forbidden(otpd, account, app_id):
    client = otpd.pinpoint(account, secret="x" * 40)
    with pytest.raises(client.exceptions.ForbiddenException) as raised:
        send(client, app_id, new_number())
    assert "signature" in raised.value.response["Error"]["Message"]


def test_unknown_access_key_is_forbidden(otpd, app_id):
    client = otpd.pinpoint({"access_key_id": "OTPDAAAAAAAAAAAAAAAA", "secret_access_key": "y" * 40})
    with pytest.raises(client.exceptions.ForbiddenException):
        verify(client, app_id, new_number(), "123456")


def test_another_accounts_application_is_forbidden(otpd, app_id):
    other = otpd.create_account("other")
    client = otpd.pinpoint(other)
    with pytest.raises(client.exceptions.ForbiddenException):
        send(client, app_id, new_number())
    with pytest.raises(client.exceptions.ForbiddenException):
        client.get_app(ApplicationId=app_id)


def test_unsigned_requests_are_forbidden(otpd, app_id):
    response = requests.post(f"{otpd.url}/v1/apps/{app_id}/verify-otp", json={"Otp": "1"})
    assert response.status_code == 403
    assert response.headers["x-amzn-ErrorType"] == "ForbiddenException"
    body = response.json()
    assert body["RequestID"] == response.headers["x-amzn-RequestId"]
    assert body["Message"]


def test_unknown_application_is_not_found(client):
    with pytest.raises(client.exceptions.NotFoundException):
        send(client, "0" * 32, new_number())
    with pytest.raises(client.exceptions.NotFoundException):
        verify(client, "not-an-application", new_number(), "123456")


def test_oversized_body_is_payload_too_large(client, app_id):
    with pytest.raises(client.exceptions.PayloadTooLargeException) as raised:
        send(client, app_id, new_number(), EntityId="x" * 70_000)
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413


def test_eleven_sends_to_one_number_in_an_hour_is_too_many(otpd, client, app_id):
    to = new_number()
    for _ in range(10):
        send(client, app_id, to)
    with pytest.raises(client.exceptions.TooManyRequestsException) as raised:
        send(client, app_id, to)
    response = raised.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 429
    # Room comes when the first of the ten leaves the hour's window, just under an hour away.
    retry_after = int(response["ResponseMetadata"]["HTTPHeaders"]["retry-after"])
    assert 3000 < retry_after <= 3600
    assert response["Error"]["Message"].endswith(f"try again in {retry_after} seconds")


def test_wrong_methods_are_not_allowed(otpd, account, app_id):
    for method, path in [("GET", f"/v1/apps/{app_id}/otp"), ("PUT", f"/v1/apps/{app_id}/verify-otp"), ("PATCH", "/v1/apps")]:
        response = signed_request(otpd, account, method, path)
        assert response.status_code == 405, (method, path)
        assert response.headers["x-amzn-ErrorType"] == "MethodNotAllowedException"


def test_malformed_json_is_a_bad_request(otpd, account, app_id):
    for body in [b"{", b"[]", b'{"CodeLength": "six"}', b"", b"\xff\xfe"]:
        response = signed_request(otpd, account, "POST", f"/v1/apps/{app_id}/otp", body=body)
        assert response.status_code == 400, body
        assert response.headers["x-amzn-ErrorType"] == "BadRequestException"
        assert response.json()["Message"]


def test_options_answers_ok(otpd, app_id):
    for path in [f"/v1/apps/{app_id}/otp", f"/v1/apps/{app_id}/verify-otp"]:
        assert requests.options(otpd.url + path).status_code == 200


def test_unknown_paths_are_pinpoint_not_found(otpd):
    response = requests.get(otpd.url + "/v1/nothing-here")
    assert response.status_code == 404
    assert response.headers["x-amzn-ErrorType"] == "NotFoundException"


def test_application_lifecycle(otpd):
    owner = otpd.create_account("apps-owner")
    client = otpd.pinpoint(owner, region="us-west-2")
    created = client.create_app(CreateApplicationRequest={"Name": "checkout", "tags": {"team": "payments"}})
    assert created["ResponseMetadata"]["HTTPStatusCode"] == 201
    application = created["ApplicationResponse"]
    assert application["Name"] == "checkout"
    assert application["tags"] == {"team": "payments"}
    assert application["Arn"].startswith("arn:aws:mobiletargeting:us-west-2:")
    assert application["CreationDate"].endswith("Z")
    assert client.get_app(ApplicationId=application["Id"])["ApplicationResponse"]["Name"] == "checkout"
    for name in ["a", "b"]:
        client.create_app(CreateApplicationRequest={"Name": name})
    first = client.get_apps(PageSize="2")["ApplicationsResponse"]
    assert len(first["Item"]) == 2 and first["NextToken"]
    second = client.get_apps(PageSize="2", Token=first["NextToken"])["ApplicationsResponse"]
    assert len(second["Item"]) == 1 and "NextToken" not in second
    # The new application works for OTP right away.
    to = new_number()
    send(client, application["Id"], to)
    assert verify(client, application["Id"], to, otpd.last_code(to)) is True
    deleted = client.delete_app(ApplicationId=application["Id"])["ApplicationResponse"]
    assert deleted["Id"] == application["Id"]
    with pytest.raises(client.exceptions.NotFoundException):
        client.get_app(ApplicationId=application["Id"])
    with pytest.raises(client.exceptions.BadRequestException):
        client.create_app(CreateApplicationRequest={"Name": ""})


def test_logs_hold_no_codes_secrets_or_numbers(otpd, account, client, app_id):
    to = new_number()
    # Eight digits, so that the code cannot turn up by chance in a timestamp.
    send(client, app_id, to, CodeLength=8)
    code = otpd.last_code(to)
    verified = client.verify_otp_message(
        ApplicationId=app_id,
        VerifyOTPMessageRequestParameters={"DestinationIdentity": to, "Otp": code, "ReferenceId": "login"},
    )
    assert verified["VerificationResponse"]["Valid"]
    logs = otpd.logs_through(verified["ResponseMetadata"]["RequestId"])
    assert "request_id" in logs
    assert account["secret_access_key"] not in logs
    assert to not in logs and to[1:] not in logs
    assert code not in logs.replace(app_id, "")


def test_every_response_carries_a_request_id(otpd, client, app_id):
    response = send(client, app_id, new_number())
    assert response["ResponseMetadata"]["RequestId"] == response["MessageResponse"]["RequestId"]
    assert json.dumps(response["ResponseMetadata"]["HTTPHeaders"]).count("x-request-id") == 1
