"""Time-limited TURN REST API credentials: username parsing, passwords, several secrets, the secrets file."""

import base64
import hashlib
import hmac
import os

import pytest

from relay.auth import long_term_key
from relay.restauth import (
    RestRefusal,
    SecretsFileError,
    SharedSecrets,
    make_credentials,
    parse_rest_username,
    read_secrets_file,
    rest_password,
)

NOW = 1_800_000_000.0
OLD, NEW = "old-secret-0123456789", "new-secret-9876543210"


def expected_password(secret: str, username: str) -> str:
    # Written out from the scheme's definition, independently of the module.
    return base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()


def test_password_is_base64_of_hmac_sha1_of_the_username():
    assert rest_password(OLD, "1800000100:alice") == expected_password(OLD, "1800000100:alice")


def test_make_credentials_puts_expiry_then_user_in_the_username():
    username, password = make_credentials(OLD, "alice", 86400, NOW)
    assert username == "1800086400:alice"
    assert password == expected_password(OLD, username)


def test_make_credentials_without_a_user_is_just_the_expiry():
    assert make_credentials(OLD, None, 60, NOW)[0] == "1800000060"


@pytest.mark.parametrize("ttl", [0, -5])
def test_make_credentials_refuses_a_ttl_that_is_not_positive(ttl):
    with pytest.raises(ValueError):
        make_credentials(OLD, "alice", ttl, NOW)


def test_parse_username_with_and_without_user_part():
    assert parse_rest_username("1800000100:alice") == (1800000100, "alice")
    assert parse_rest_username("1800000100") == (1800000100, None)
    assert parse_rest_username("1800000100:") == (1800000100, "")


@pytest.mark.parametrize("username", ["alice", "alice:1800000100", "", ":x", "-5:x", "1e9:x", "\uff11\uff12\uff13:x",
                                      "1234567890123:x", " 1800000100:x"])
def test_parse_username_rejects_what_is_not_a_unix_time(username):
    with pytest.raises(ValueError):
        parse_rest_username(username)


def test_any_configured_secret_verifies():
    secrets = SharedSecrets([OLD, NEW])
    for secret in (OLD, NEW):
        username, password = make_credentials(secret, "alice", 600, NOW)
        assert secrets.verify_password(username, password, NOW).ok


def test_a_password_from_another_secret_is_refused():
    username, password = make_credentials("some-other-secret", "alice", 600, NOW)
    check = SharedSecrets([OLD, NEW]).verify_password(username, password, NOW)
    assert check.refusal is RestRefusal.BAD_PASSWORD


def test_expired_username_is_refused_even_with_the_right_password():
    username, password = make_credentials(OLD, "alice", 600, NOW)
    check = SharedSecrets([OLD]).verify_password(username, password, NOW + 600)
    assert check.refusal is RestRefusal.EXPIRED
    assert check.expiry == int(NOW) + 600


def test_unparseable_username_is_refused_with_its_reason():
    check = SharedSecrets([OLD]).check_username("alice", NOW)
    assert check.refusal is RestRefusal.UNPARSEABLE
    assert "timestamp" in check.refusal.value


def test_no_secrets_refuses_everything():
    secrets = SharedSecrets()
    assert not secrets
    username, password = make_credentials(OLD, "alice", 600, NOW)
    assert secrets.verify_password(username, password, NOW).refusal is RestRefusal.NO_SECRETS


def test_keys_for_gives_the_long_term_key_under_each_secret():
    username = "1800000600:alice"
    keys = SharedSecrets([OLD, NEW]).keys_for(username, "example.com")
    assert keys == tuple(long_term_key(username, "example.com", expected_password(s, username)) for s in (OLD, NEW))


@pytest.mark.parametrize("secret", ["", "short"])
def test_too_short_inline_secret_is_refused(secret):
    with pytest.raises(ValueError):
        SharedSecrets([secret])


# --- the secrets file ---------------------------------------------------------------------------------------


NOBODY = 65534  # the nobody user and nogroup group of Debian


def write_secrets(path, text: str, mode: int = 0o600):
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def test_secrets_file_one_per_line_with_comments_and_blanks(tmp_path):
    path = write_secrets(tmp_path / "secrets", f"# rotated monthly\n{OLD}\n\n  {NEW}  \n")
    assert read_secrets_file(path) == (OLD, NEW)


@pytest.mark.parametrize("mode", [0o604, 0o644, 0o660, 0o620, 0o610, 0o606])
def test_secrets_file_open_to_others_or_writable_by_the_group_is_refused(tmp_path, mode):
    path = write_secrets(tmp_path / "secrets", f"{OLD}\n", mode)
    with pytest.raises(SecretsFileError, match="chmod 600"):
        read_secrets_file(path)


def test_secrets_file_group_readable_is_refused_unless_root_owns_it(tmp_path):
    """0640 is the systemd install's root:rpturn file; owned by anyone else the group bit exposes the secret."""
    path = write_secrets(tmp_path / "secrets", f"{OLD}\n", 0o640)
    assert os.stat(path).st_uid == 0  # the tests run as root, as CI does
    assert read_secrets_file(path) == (OLD,)
    os.chown(path, NOBODY, -1)
    with pytest.raises(SecretsFileError, match=r"mode 0640 \(owner uid 65534\).*chmod 600"):
        read_secrets_file(path)


def test_secrets_file_missing_names_the_file(tmp_path):
    with pytest.raises(SecretsFileError, match="cannot read"):
        read_secrets_file(str(tmp_path / "absent"))


def test_secrets_file_short_secret_names_the_line(tmp_path):
    path = write_secrets(tmp_path / "secrets", f"{OLD}\nabc\n")
    with pytest.raises(SecretsFileError, match=r"secrets:2: "):
        read_secrets_file(path)


def test_secrets_file_reload_picks_up_rotation_and_keeps_old_secrets_on_a_bad_file(tmp_path):
    path = write_secrets(tmp_path / "secrets", f"{OLD}\n")
    secrets = SharedSecrets(secrets_file=path)
    new_user, new_password = make_credentials(NEW, "bob", 600, NOW)
    assert not secrets.verify_password(new_user, new_password, NOW).ok
    write_secrets(tmp_path / "secrets", f"{OLD}\n{NEW}\n")
    secrets.reload()
    assert secrets.verify_password(new_user, new_password, NOW).ok
    write_secrets(tmp_path / "secrets", f"{NEW}\n", 0o644)
    with pytest.raises(SecretsFileError):
        secrets.reload()
    assert secrets.secrets == (OLD.encode(), NEW.encode())


def test_inline_and_file_secrets_both_verify(tmp_path):
    path = write_secrets(tmp_path / "secrets", f"{NEW}\n")
    secrets = SharedSecrets([OLD], secrets_file=path)
    for secret in (OLD, NEW):
        assert secrets.verify_password(*make_credentials(secret, "u", 60, NOW), NOW).ok
