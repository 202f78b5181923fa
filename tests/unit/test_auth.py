"""Long-term keys, stateless nonces and the credential store (userdb parsing, reload)."""

import hashlib
import hmac
import re
from pathlib import Path

import pytest

from relay.auth import (
    CredentialStore,
    NonceIssuer,
    NonceStatus,
    UserDbError,
    iter_userdb,
    long_term_key,
)
from tests.support.stun_vectors import LONG_TERM_PASSWORD, LONG_TERM_REALM, LONG_TERM_USERNAME, REQUEST_LONG_TERM

SECRET = bytes(range(32))
REALM = "example.org"


def md5(text: str) -> bytes:
    return hashlib.md5(text.encode("utf-8")).digest()


# --- keys ---------------------------------------------------------------------------------------------------


def test_rfc5769_long_term_key_for_utf8_username():
    # RFC 5769 §2.4: username "マトリックス", realm "example.org", password "TheMatrIX" after SASLprep.
    username = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
    expected = md5(f"{username}:example.org:TheMatrIX")
    assert long_term_key(username, "example.org", "TheMatrIX") == expected
    store = CredentialStore("example.org", {username: "TheMatrIX"})
    assert store.key_for(username) == expected


def test_rfc5769_long_term_key_verifies_the_vector_message_integrity():
    # Independent of how the key is computed: the RFC's own MESSAGE-INTEGRITY (the last 20 bytes, after a 4-byte
    # attribute header) is HMAC-SHA1 over the message before it, keyed with the long-term key.
    store = CredentialStore(LONG_TERM_REALM, {LONG_TERM_USERNAME: LONG_TERM_PASSWORD})
    key = store.key_for(LONG_TERM_USERNAME)
    assert hmac.new(key, REQUEST_LONG_TERM[:-24], hashlib.sha1).digest() == REQUEST_LONG_TERM[-20:]


def test_inline_user_key_uses_the_store_realm():
    store = CredentialStore("example.com", {"pexip": "admin123"})
    assert store.realm == "example.com"
    assert store.key_for("pexip") == md5("pexip:example.com:admin123")


def test_unknown_user_has_no_key():
    assert CredentialStore(REALM, {"alice": "pw"}).key_for("bob") is None


# --- nonces -------------------------------------------------------------------------------------------------


def test_fresh_nonce_is_valid_for_the_client_it_was_issued_to():
    issuer = NonceIssuer(SECRET, lifetime=600)
    nonce = issuer.issue("192.0.2.1", now=1000.0)
    assert issuer.check(nonce, "192.0.2.1", now=1000.0) is NonceStatus.VALID
    assert issuer.check(nonce, "192.0.2.1", now=1599.9) is NonceStatus.VALID


def test_nonce_is_stale_once_its_lifetime_has_passed():
    issuer = NonceIssuer(SECRET, lifetime=600)
    nonce = issuer.issue("192.0.2.1", now=1000.0)
    assert issuer.check(nonce, "192.0.2.1", now=1600.0) is NonceStatus.STALE
    assert issuer.check(nonce, "192.0.2.1", now=100000.0) is NonceStatus.STALE


@pytest.mark.parametrize(("issued_to", "checked_for", "checked_at", "status"), [
    pytest.param("192.0.2.1", "192.0.2.1", 999.0, NonceStatus.STALE,
                 id="from_the_future_is_stale_so_the_client_gets_a_fresh_one"),
    pytest.param("192.0.2.1", "192.0.2.2", 1000.0, NonceStatus.INVALID, id="issued_to_another_client_ip_is_invalid"),
    pytest.param("::ffff:192.0.2.1", "192.0.2.1", 1000.0, NonceStatus.VALID,
                 id="ipv4_mapped_spelling_of_the_client_ip_is_the_same_client"),
])
def test_nonce_checked(issued_to, checked_for, checked_at, status):
    issuer = NonceIssuer(SECRET)
    nonce = issuer.issue(issued_to, now=1000.0)
    assert issuer.check(nonce, checked_for, now=checked_at) is status


def test_nonce_from_another_secret_is_invalid():
    nonce = NonceIssuer(b"another secret, 32 bytes long!!!").issue("192.0.2.1", now=1000.0)
    assert NonceIssuer(SECRET).check(nonce, "192.0.2.1", now=1000.0) is NonceStatus.INVALID


def test_nonce_issued_by_one_worker_verifies_in_another_with_the_same_secret():
    nonce = NonceIssuer(SECRET).issue("2001:db8::7", now=5000.0)
    assert NonceIssuer(SECRET).check(nonce, "2001:db8::7", now=5001.0) is NonceStatus.VALID


def test_nonce_with_a_forged_timestamp_is_invalid():
    issuer = NonceIssuer(SECRET, lifetime=600)
    nonce = issuer.issue("192.0.2.1", now=1000.0)
    version, _issued, mac = nonce.split(".")
    forged = f"{version}.{format(1_000_000 * 1000, 'x')}.{mac}"  # push the issue time forward
    assert issuer.check(forged, "192.0.2.1", now=1_000_000.0) is NonceStatus.INVALID


def test_nonce_with_any_single_character_changed_is_invalid():
    issuer = NonceIssuer(SECRET)
    nonce = issuer.issue("192.0.2.1", now=1000.0)
    for i, ch in enumerate(nonce):
        changed = nonce[:i] + ("A" if ch != "A" else "B") + nonce[i + 1:]
        assert issuer.check(changed, "192.0.2.1", now=1000.0) is NonceStatus.INVALID, changed


@pytest.mark.parametrize("garbage", [
    "", "x", "1..", "1.3e8.", "1.zz.AAAAAAAAAAAAAAAAAAAAAA", "obMatJos2AAAA", "\u30de" * 40, "1.3e8." + "\u00e9" * 22,
    "\"quoted\"", "1.3e8.AAAAAAAAAAAAAAAAAAAAAA\n", "a" * 10_000, None, b"1.3e8.AAAAAAAAAAAAAAAAAAAAAA", 42,
])
def test_garbage_nonce_is_invalid_not_an_exception(garbage):
    assert NonceIssuer(SECRET).check(garbage, "192.0.2.1", now=1000.0) is NonceStatus.INVALID


def test_nonce_is_printable_quoted_string_safe_and_short():
    issuer = NonceIssuer(SECRET)
    for now in (0.0, 1000.5, 1.7e9, 4.1e12):
        nonce = issuer.issue("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", now=now)
        assert len(nonce) < 128
        assert re.fullmatch(r"[!#-\[\]-~]+", nonce), nonce  # printable ASCII without '"' and '\'
        assert not nonce.startswith("obMatJos2")  # RFC 8489 nonce cookie: would announce security features


def test_nonce_issuer_refuses_a_short_secret():
    with pytest.raises(ValueError, match="at least 16"):
        NonceIssuer(b"short")


# --- userdb -------------------------------------------------------------------------------------------------


def write(tmp_path, text: str | bytes, name: str = "turnuserdb.conf") -> str:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(path)


def test_userdb_key_lines_comments_and_blank_lines(tmp_path):
    alice = md5(f"alice:{REALM}:wonderland")
    path = write(tmp_path, f"# managed by rpturn-users\n\nalice:0x{alice.hex()}\n   # indented comment\n")
    store = CredentialStore(REALM, userdb=path)
    assert store.key_for("alice") == alice
    assert store.usernames == {"alice"}


def test_userdb_accepts_uppercase_hex_and_crlf_line_endings(tmp_path):
    alice = md5(f"alice:{REALM}:wonderland")
    path = write(tmp_path, f"alice:0x{alice.hex().upper()}\r\n")
    assert CredentialStore(REALM, userdb=path).key_for("alice") == alice


def test_userdb_plain_coturn_password_line_is_keyed_with_the_store_realm(tmp_path):
    path = write(tmp_path, "bob:s3cret:with:colons#and-hash\n")
    assert CredentialStore(REALM, userdb=path).key_for("bob") == md5(f"bob:{REALM}:s3cret:with:colons#and-hash")


def test_userdb_utf8_username(tmp_path):
    username = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
    key = md5(f"{username}:{REALM}:TheMatrIX")
    path = write(tmp_path, f"{username}:0x{key.hex()}\n")
    assert CredentialStore(REALM, userdb=path).key_for(username) == key


def test_userdb_entry_overrides_inline_user_of_the_same_name(tmp_path):
    new = md5(f"pexip:{REALM}:new-password")
    path = write(tmp_path, f"pexip:0x{new.hex()}\n")
    store = CredentialStore(REALM, {"pexip": "admin123", "other": "pw"}, userdb=path)
    assert store.key_for("pexip") == new
    assert store.key_for("other") == md5(f"other:{REALM}:pw")


@pytest.mark.parametrize(("content", "line", "reason"), [
    ("# ok\nalice\n", 2, "expected user:0x<32 hex digits> or user:password"),
    ("alice:\n", 1, "user 'alice': empty password"),
    (":0x" + "0" * 32 + "\n", 1, "empty username"),
    ("alice:0x1234\n", 1, "user 'alice': a key must be 0x and 32 hex digits, got 4"),
    ("alice:0x" + "0" * 33 + "\n", 1, "user 'alice': a key must be 0x and 32 hex digits, got 33"),
    ("alice:0x" + "g" * 32 + "\n", 1, "user 'alice': a key must be 0x and 32 hex digits, got non-hex characters"),
    ("# x\nbob:0X12345678901234567890123456789z\n", 2,
     "user 'bob': a key must be 0x and 32 hex digits, got non-hex characters"),
    ("al ice:pw\n", 1, "a username cannot contain spaces or control characters"),
    ("a\x01b:pw\n", 1, "a username cannot contain spaces or control characters"),
    ("alice:pw\n\nalice:other\n", 3, "user 'alice' already on line 1"),
    ("u" * 513 + ":pw\n", 1, "username longer than 512 bytes"),
])
def test_bad_userdb_line_names_file_and_line(tmp_path, content, line, reason):
    path = write(tmp_path, content)
    with pytest.raises(UserDbError) as e:
        CredentialStore(REALM, userdb=path)
    assert (e.value.path, e.value.line, e.value.reason) == (path, line, reason)
    assert str(e.value) == f"{path}:{line}: {reason}"


def test_userdb_line_that_is_not_utf8_names_file_and_line(tmp_path):
    path = write(tmp_path, b"alice:pw\n\xff\xfe:pw\n")
    with pytest.raises(UserDbError, match=re.escape(f"{path}:2: not valid UTF-8")):
        CredentialStore(REALM, userdb=path)


def test_missing_userdb_names_the_file(tmp_path):
    path = str(tmp_path / "absent.conf")
    with pytest.raises(UserDbError, match=re.escape(f"{path}: cannot read: No such file or directory")):
        CredentialStore(REALM, userdb=path)


def test_iter_userdb_keeps_every_line_for_rewriting(tmp_path):
    lines = list(iter_userdb(b"# head\n\nalice:pw\n", "db"))
    assert [(n, text) for n, text, _ in lines] == [(1, "# head"), (2, ""), (3, "alice:pw")]
    assert [entry.username if entry else None for _, _, entry in lines] == [None, None, "alice"]


def test_reload_picks_up_changes(tmp_path):
    path = write(tmp_path, "alice:one\n")
    store = CredentialStore(REALM, userdb=path)
    write(tmp_path, "alice:two\ncarol:three\n")
    store.reload()
    assert store.key_for("alice") == md5(f"alice:{REALM}:two")
    assert store.key_for("carol") == md5(f"carol:{REALM}:three")


def test_reload_drops_deleted_users(tmp_path):
    path = write(tmp_path, "alice:one\nbob:two\n")
    store = CredentialStore(REALM, userdb=path)
    write(tmp_path, "alice:one\n")
    store.reload()
    assert store.key_for("bob") is None


@pytest.mark.parametrize(("spoil", "error"), [
    pytest.param(lambda path: path.write_text("alice:one\nbroken line\n"), "{path}:2:", id="bad_file"),
    pytest.param(lambda path: path.unlink(), "cannot read", id="vanished_file"),
])
def test_reload_that_fails_keeps_the_old_users_and_raises(tmp_path, spoil, error):
    path = write(tmp_path, "alice:one\n")
    store = CredentialStore(REALM, {"inline": "pw"}, userdb=path)
    spoil(tmp_path / "turnuserdb.conf")
    with pytest.raises(UserDbError, match=re.escape(error.format(path=path))):
        store.reload()
    assert store.key_for("alice") == md5(f"alice:{REALM}:one")
    assert store.key_for("inline") == md5(f"inline:{REALM}:pw")


def test_shipped_example_userdb_parses_and_holds_the_documented_user():
    path = Path(__file__).resolve().parents[2] / "conf" / "turnuserdb.example"
    store = CredentialStore("example.com", userdb=str(path))
    assert store.key_for("example") == md5("example:example.com:change-me")


def test_userdb_username_of_512_bytes_is_accepted(tmp_path):
    username = "\u00e9" * 256  # 512 bytes in UTF-8: the STUN USERNAME limit
    path = write(tmp_path, f"{username}:pw\n")
    assert CredentialStore(REALM, userdb=path).key_for(username) == md5(f"{username}:{REALM}:pw")
