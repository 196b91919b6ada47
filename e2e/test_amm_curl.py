"""Every curl example of the provider's page, replayed verbatim against otpd (only the host and
the placeholder credentials changed)."""

import json
import subprocess

SEND = r'''curl --user AUTH_KEY:AUTH_SECRET \
-XPOST https://api.amm.cloud/sms/v2/verify/send \
-d "to=393480000000" \
-d "text=Codice di sblocco \${verify_code}"'''

CHECK = r'''curl --user AUTH_KEY:AUTH_SECRET \
-XGET "https://api.amm.cloud/sms/v2/verify/check?verify_id=728d03eee5a72e8102a4a905e6325449d27c583b&verify_code=1234"'''

COMMAND = r'''curl --user AUTH_KEY:AUTH_SECRET -XPOST https://api.amm.cloud/sms/v2/verify/command \
-d "verify_id=35baca938c120e49e462809b4e62efb5fe6f6bd8" \
-d "command=DELETE"'''

SEARCH = r'''curl --user AUTH_KEY:AUTH_SECRET \
-XGET "https://api.amm.cloud/sms/v2/verify/search?verify_id=728d03eee5a72e8102a4a905e6325449d27c583b"'''


def run(otpd, account, example, **replace):
    command = example.replace("https://api.amm.cloud", otpd.url).replace(
        "AUTH_KEY:AUTH_SECRET", f"{account['access_key_id']}:{account['secret_access_key']}"
    )
    for old, new in replace.items():
        command = command.replace(old, new)
    result = subprocess.run(
        ["bash", "-c", command + ' -s -w "\\n%{http_code}"'], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    body, status = result.stdout.rsplit("\n", 1)
    return int(status), json.loads(body)


def test_send_example(otpd, account):
    status, body = run(otpd, account, SEND)
    assert status == 200
    assert len(body["verify_id"]) == 40
    message = otpd.messages()[-1]
    assert message["to"] == "+393480000000"
    code = otpd.last_code("+393480000000")
    assert len(code) == 4
    assert message["text"] == f"Codice di sblocco {code}"


def test_check_example_with_its_unknown_id(otpd, account):
    assert run(otpd, account, CHECK) == (200, {"id_sms": "", "verify_status": "VERIFY ID ERROR"})


def test_command_example_with_its_unknown_id(otpd, account):
    assert run(otpd, account, COMMAND) == (400, {"errorMsg": "VERIFY ID ERROR"})


def test_search_example_with_its_unknown_id(otpd, account):
    assert run(otpd, account, SEARCH) == (400, {"errorMsg": "VERIFY ID ERROR"})


def test_the_examples_as_one_flow(otpd, account):
    """The same commands with the example ids replaced by a real one: send, check, search, delete."""
    _, sent = run(otpd, account, SEND, **{"393480000000": "393480000001"})
    verify_id = sent["verify_id"]
    code = otpd.last_code("+393480000001")
    _, searched = run(otpd, account, SEARCH, **{"728d03eee5a72e8102a4a905e6325449d27c583b": verify_id})
    assert searched["verify_status"] == "PENDING"
    status, deleted = run(otpd, account, COMMAND, **{"35baca938c120e49e462809b4e62efb5fe6f6bd8": verify_id})
    assert (status, deleted) == (200, {"command": "DELETE"})
    status, checked = run(
        otpd,
        account,
        CHECK,
        **{"728d03eee5a72e8102a4a905e6325449d27c583b": verify_id, "verify_code=1234": f"verify_code={code}"},
    )
    assert status == 200 and checked["verify_status"] == "CANCELLED"
