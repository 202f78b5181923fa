"""Properties of the TURN REST API credentials: what make_credentials gives verifies until it expires, under any of
the secrets, and nothing else does."""

from hypothesis import given
from hypothesis import strategies as st

from relay.restauth import RestRefusal, SharedSecrets, make_credentials, parse_rest_username
from tests.support.strategies import scaled

secrets_st = st.text(min_size=8, max_size=64).filter(lambda s: "\n" not in s)
users = st.one_of(st.none(), st.text(min_size=1, max_size=40).filter(lambda u: ":" not in u))
now_st = st.integers(min_value=0, max_value=4_000_000_000)
ttl_st = st.integers(min_value=1, max_value=10 * 86400)


@scaled(0.25)
@given(st.lists(secrets_st, min_size=1, max_size=4, unique=True), st.data(), users, now_st, ttl_st)
def test_credentials_from_any_secret_verify_until_expiry(secrets, data, user, now, ttl):
    secret = data.draw(st.sampled_from(secrets))
    username, password = make_credentials(secret, user, ttl, now)
    store = SharedSecrets(secrets)
    assert store.verify_password(username, password, now).ok
    assert store.verify_password(username, password, now + ttl - 0.5).ok
    assert store.verify_password(username, password, now + ttl).refusal is RestRefusal.EXPIRED
    assert parse_rest_username(username) == (now + ttl, user)


@scaled(0.25)
@given(secrets_st, secrets_st, users, now_st, ttl_st)
def test_credentials_from_an_unlisted_secret_never_verify(listed, other, user, now, ttl):
    username, password = make_credentials(other, user, ttl, now)
    check = SharedSecrets([listed]).verify_password(username, password, now)
    assert check.ok is (listed == other)


@scaled(0.25)
@given(secrets_st, users, now_st, ttl_st, st.integers(min_value=0), st.binary(min_size=1, max_size=4))
def test_any_changed_password_is_refused(secret, user, now, ttl, position, junk):
    username, password = make_credentials(secret, user, ttl, now)
    i = position % (len(password) + 1)
    changed = password[:i] + junk.hex() + password[i:]
    assert SharedSecrets([secret]).verify_password(username, changed, now).refusal is RestRefusal.BAD_PASSWORD


@given(st.text(max_size=60), now_st)
def test_any_username_is_judged_without_raising(username, now):
    check = SharedSecrets(["a-long-enough-secret"]).check_username(username, now)
    assert check.refusal in (None, RestRefusal.UNPARSEABLE, RestRefusal.EXPIRED)
