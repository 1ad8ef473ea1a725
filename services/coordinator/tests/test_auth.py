"""TokenBook: bearer tokens known by their sha256, parse errors that never quote a hash, and a tokens file
followed for changes (rotation without restart, a bad edit keeps the entries read before)."""

import hashlib
import logging
import os

import pytest

from services.common.errors import ConfigError, Unauthenticated
from services.coordinator.auth import Caller, TokenBook, new_token, parse_entries, token_entry

AUTH_LOGGER = "services.coordinator.auth"


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def write_atomically(path, text: str) -> None:
    """As a Secret volume update or an editor's save: a new file renamed over the old one."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


@pytest.fixture
def tokens_file(tmp_path):
    return tmp_path / "tokens"


# ---- tokens and entries ----------------------------------------------------------------------------


def test_new_tokens_are_fresh_and_url_safe():
    tokens = {new_token() for _ in range(20)}
    assert len(tokens) == 20
    for token in tokens:
        assert token.startswith("tire_") and len(token) == len("tire_") + 43
        assert all(c.isalnum() or c in "-_" for c in token)


@pytest.mark.parametrize("admin", [False, True])
def test_an_entry_lets_its_token_in_as_its_principal(admin):
    token = new_token()
    entry = token_entry(token, "alice", admin=admin)
    assert entry.startswith("sha256:" + hashlib.sha256(token.encode()).hexdigest() + " alice")
    assert token not in entry
    book = TokenBook(inline=entry)
    assert book.caller(bearer(token)) == Caller("alice", admin=admin)


def test_inline_entries_are_comma_separated_with_blanks_and_comments():
    alice, root = new_token(), new_token()
    book = TokenBook(
        inline=f" {token_entry(alice, 'alice')} , ,{token_entry(root, 'root', admin=True)} # ops"
    )
    assert book.caller(bearer(alice)) == Caller("alice")
    assert book.caller(bearer(root)) == Caller("root", admin=True)


@pytest.mark.parametrize("principal", ["", "Alice", "-lead", "a b", "x" * 65, "al/ice"])
def test_token_entry_refuses_a_bad_principal(principal):
    with pytest.raises(ValueError, match="a principal is 1 to 64 characters"):
        token_entry(new_token(), principal)


# ---- metadata ---------------------------------------------------------------------------------------


@pytest.fixture
def alice():
    token = new_token()
    return token, TokenBook(inline=token_entry(token, "alice"))


@pytest.mark.parametrize("metadata", [[], [("x-request-id", "1")]])
def test_no_authorization_metadata_is_unauthenticated(alice, metadata):
    _, book = alice
    with pytest.raises(Unauthenticated, match="carries no credential"):
        book.caller(metadata)


@pytest.mark.parametrize(
    "value",
    [
        "Basic YWxpY2U6cGFzc3dvcmQ=",
        "Bearer",
        "Bearer ",
        "Bearer two words",
        "tire_token-without-scheme",
        "",
    ],
)
def test_authorization_that_is_not_bearer_is_refused(alice, value):
    _, book = alice
    with pytest.raises(Unauthenticated, match="must read `Bearer <token>`"):
        book.caller([("authorization", value)])


def test_bytes_authorization_is_refused(alice):
    token, book = alice
    with pytest.raises(Unauthenticated, match="must read `Bearer <token>`"):
        book.caller([("authorization", f"Bearer {token}".encode())])


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer", "bEaReR"])
def test_the_scheme_is_case_insensitive(alice, scheme):
    token, book = alice
    assert book.caller([("authorization", f"  {scheme}   {token} ")]) == Caller("alice")


def test_an_unknown_token_is_refused_without_quoting_it(alice):
    _, book = alice
    stranger = new_token()
    with pytest.raises(Unauthenticated, match="not valid here") as err:
        book.caller(bearer(stranger))
    assert stranger not in str(err.value)
    assert hashlib.sha256(stranger.encode()).hexdigest() not in str(err.value)


def test_a_10_kb_header_is_refused_without_quoting_it(alice):
    _, book = alice
    huge = "t" * 10_000
    with pytest.raises(Unauthenticated, match="must read `Bearer <token>`") as err:
        book.caller(bearer(huge))
    assert huge[:100] not in str(err.value)


def test_the_first_authorization_value_counts(alice):
    token, book = alice
    assert (
        book.caller([("authorization", f"Bearer {token}"), ("authorization", "Basic x")]).principal == "alice"
    )
    with pytest.raises(Unauthenticated):
        book.caller([("authorization", "Basic x"), ("authorization", f"Bearer {token}")])


# ---- parse errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        "sha256:{digest} Alice",  # upper case principal
        "sha256:{digest} alice root",  # a role other than admin
        "sha256:{digest}",  # no principal
        "sha1:{digest} alice",
        "{digest} alice",
        "sha256:{digest}00 alice",  # 66 hex digits
        "sha256:{upper} alice",
        "sha256:{digest} alice admin extra",
    ],
)
def test_a_malformed_entry_names_the_source_and_line_but_not_the_hash(bad):
    digest = hashlib.sha256(b"secret").hexdigest()
    line = bad.format(digest=digest, upper=digest.upper())
    lines = ["# tokens", "", token_entry(new_token(), "bob"), line]
    with pytest.raises(ConfigError, match=r"^/etc/tire/tokens entry 4 must read `sha256:") as err:
        parse_entries(lines, "/etc/tire/tokens")
    assert digest not in str(err.value).lower()


def test_a_malformed_inline_entry_names_the_variable_and_its_position():
    digest = hashlib.sha256(b"secret").hexdigest()
    inline = f"{token_entry(new_token(), 'bob')},sha256:{digest} Bob"
    with pytest.raises(ConfigError, match=r"^TIRE_COORDINATOR_TOKENS entry 2 ") as err:
        TokenBook(inline=inline)
    assert digest not in str(err.value)


def test_a_malformed_file_at_start_is_a_config_error_naming_it(tokens_file):
    tokens_file.write_text(token_entry(new_token(), "bob") + "\nnot an entry\n")
    with pytest.raises(ConfigError, match=f"{tokens_file} entry 2 "):
        TokenBook(str(tokens_file))


# ---- configuration ----------------------------------------------------------------------------------


@pytest.mark.parametrize("inline", ["", " ", " , ,", "# nobody"])
def test_nothing_configured_is_a_config_error(inline):
    with pytest.raises(ConfigError, match="TIRE_COORDINATOR_TOKENS_FILE or TIRE_COORDINATOR_TOKENS"):
        TokenBook("", inline)


def test_a_missing_file_is_a_config_error_naming_it(tmp_path):
    missing = tmp_path / "absent"
    with pytest.raises(ConfigError, match=f"cannot read the tokens file {missing}"):
        TokenBook(str(missing))


def test_an_empty_file_is_allowed_and_refuses_everybody(tokens_file):
    tokens_file.write_text("")
    book = TokenBook(str(tokens_file))
    with pytest.raises(Unauthenticated, match="not valid here"):
        book.caller(bearer(new_token()))


def test_inline_and_file_entries_both_count(tokens_file):
    alice, bob = new_token(), new_token()
    tokens_file.write_text(token_entry(bob, "bob") + "\n")
    book = TokenBook(str(tokens_file), token_entry(alice, "alice"))
    assert book.caller(bearer(alice)).principal == "alice"
    assert book.caller(bearer(bob)).principal == "bob"


# ---- rotation ---------------------------------------------------------------------------------------


def test_a_file_replaced_by_rename_rotates_without_restart(tokens_file):
    old, new = new_token(), new_token()
    tokens_file.write_text(token_entry(old, "alice") + "\n")
    book = TokenBook(str(tokens_file))
    assert book.caller(bearer(old)).principal == "alice"
    with pytest.raises(Unauthenticated):
        book.caller(bearer(new))

    write_atomically(tokens_file, token_entry(new, "alice", admin=True) + "\n")
    assert book.caller(bearer(new)) == Caller("alice", admin=True)
    with pytest.raises(Unauthenticated, match="not valid here"):
        book.caller(bearer(old))


def test_a_file_rewritten_in_place_rotates_without_restart(tokens_file):
    old, new = new_token(), new_token()
    tokens_file.write_text(token_entry(old, "alice") + "\n")
    book = TokenBook(str(tokens_file))
    assert book.caller(bearer(old)).principal == "alice"
    inode = tokens_file.stat().st_ino

    with open(tokens_file, "w") as file:  # same inode, another size
        file.write("# rotated\n" + token_entry(new, "alice") + "\n")
    assert tokens_file.stat().st_ino == inode
    assert book.caller(bearer(new)).principal == "alice"
    with pytest.raises(Unauthenticated, match="not valid here"):
        book.caller(bearer(old))


def test_a_file_turned_to_garbage_keeps_the_entries_and_logs_once(tokens_file, caplog):
    alice = new_token()
    tokens_file.write_text(token_entry(alice, "alice") + "\n")
    book = TokenBook(str(tokens_file))
    assert book.caller(bearer(alice)).principal == "alice"

    digest = hashlib.sha256(b"half-written").hexdigest()
    write_atomically(tokens_file, f"sha256:{digest} Alice\n")
    with caplog.at_level(logging.INFO, logger=AUTH_LOGGER):
        for _ in range(5):
            assert book.caller(bearer(alice)).principal == "alice"
    errors = [r for r in caplog.records if r.name == AUTH_LOGGER and r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert str(tokens_file) in errors[0].getMessage()
    assert digest not in errors[0].getMessage()

    # Fixed: read again, and the new entries replace the old ones.
    bob = new_token()
    write_atomically(tokens_file, token_entry(bob, "bob") + "\n")
    assert book.caller(bearer(bob)).principal == "bob"
    with pytest.raises(Unauthenticated):
        book.caller(bearer(alice))


def test_a_deleted_file_keeps_the_entries(tokens_file, caplog):
    alice = new_token()
    tokens_file.write_text(token_entry(alice, "alice") + "\n")
    book = TokenBook(str(tokens_file))
    tokens_file.unlink()
    with caplog.at_level(logging.INFO, logger=AUTH_LOGGER):
        for _ in range(3):
            assert book.caller(bearer(alice)).principal == "alice"
    errors = [r for r in caplog.records if r.name == AUTH_LOGGER and r.levelno == logging.ERROR]
    assert len(errors) == 1

    # Back again with other entries: they are read.
    bob = new_token()
    tokens_file.write_text(token_entry(bob, "bob") + "\n")
    assert book.caller(bearer(bob)).principal == "bob"
    with pytest.raises(Unauthenticated):
        book.caller(bearer(alice))


def test_an_unchanged_file_is_not_read_again(tokens_file, monkeypatch):
    alice = new_token()
    tokens_file.write_text(token_entry(alice, "alice") + "\n")
    book = TokenBook(str(tokens_file))
    reads = []
    real_open = open

    def counting_open(path, *args, **kwargs):
        reads.append(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", counting_open)
    for _ in range(5):
        book.caller(bearer(alice))
    assert str(tokens_file) not in [os.fspath(p) for p in reads]
