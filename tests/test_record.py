"""Spool records: what real shells print with `export -p` must round-trip exactly."""
import shutil

import pytest
from conftest import run_hook
from hypothesis import given, settings
from hypothesis import strategies as st

from nhrpbridge.errors import RecordError
from nhrpbridge.protocol.record import decode_record

HOSTILE = {
    "PLUTO_PEER_ID": "C=XX, O=\"Org, Inc\", CN=it's $(touch /tmp/pwned) `id`",
    "PLUTO_MY_ID": "line1\nline2\n",
    "PLUTO_PEER_CA": b"CN=caf\xe9 \xff\xfe raw".decode("utf-8", "surrogateescape"),
    "PLUTO_CONN_POLICY": "a\\b\\\\c 'single' \"double\" \t tab",
    "PLUTO_USERNAME": "",
    "VTI_IFACE": "$HOME ${x} !bang *glob ?q [set]",
    "CONNMARK_IN": "0x1/0xffffffff",
    "XAUTH_FAILED": "0",
    "PLUTO_MY_SOURCEIP": "\x01\x02 control \x7f",
}


@pytest.mark.parametrize("shell", ["/bin/sh", "dash", "bash"])
def test_hostile_values_round_trip_through_the_real_hook(tmp_path, shell):
    if not shutil.which(shell):
        pytest.skip(f"{shell} not installed")
    long_dn = ", ".join(f"OU=unit{i:04d}" for i in range(170))  # about 2 KB
    env = dict(HOSTILE, PLUTO_VERB="up-host", PLUTO_PEER="192.0.2.1", PLUTO_X_LONG_DN=long_dn,
               SPI_IN="0x1", SPI_OUT="0x2")
    result = run_hook(env, tmp_path, "--no-chain", shell=shell)
    assert result.returncode == 0, result.stderr
    records = sorted(tmp_path.glob("*.rec"))
    assert len(records) == 1
    got = decode_record(records[0].read_bytes())
    for key, value in env.items():
        assert got[key] == value, key
    assert len(long_dn) > 2000
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("data, message", [
    (b"export PLUTO_A='unterminated\n", "unterminated single quote"),
    (b'export PLUTO_A="open\n', "unterminated double quote"),
    (b"export PLUTO_A=$'\\xZ'\n", "bad \\x escape"),
    (b"PLUTO_A=1\n", "expected 'export NAME=...'"),
    (b"export =1\n", "missing variable name"),
    (b"export PLUTO_A='x' junk\n", "unexpected byte"),
])
def test_malformed_records_raise_record_error(data, message):
    with pytest.raises(RecordError, match=message.replace("\\", "\\\\").replace("(", ".")):
        decode_record(data)


def test_record_truncated_mid_value_is_an_error_not_a_partial_env():
    full = b"export PLUTO_VERB='up-host'\nexport PLUTO_PEER_ID='C=XX, CN=a'\n"
    for cut in (10, 40, 50, len(full) - 1):
        with pytest.raises(RecordError):
            decode_record(full[:cut])
    with pytest.raises(RecordError, match="empty"):
        decode_record(b"")


def test_bash_ansi_c_quoting():
    got = decode_record(b"export A=$'\\377\\n\\t\\x41\\'q'\nexport B\ndeclare -x C=\"\\$x\"\n")
    assert got == {"A": b"\xff\n\tA'q".decode("utf-8", "surrogateescape"), "C": "$x"}


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_env_or_record_error(data):
    try:
        env = decode_record(data)
    except RecordError:
        return
    assert isinstance(env, dict)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.from_regex(r"PLUTO_[A-Z_]{1,12}", fullmatch=True),
                       st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                               max_size=40), max_size=6))
def test_fast_path_agrees_with_the_full_grammar(env):
    """dash output without quotes takes the regex path; with them, the full parser."""
    import subprocess

    from nhrpbridge.protocol.record import _decode_general, _decode_simple
    out = subprocess.run(["dash", "-c", "export -p; echo '# nhrpbridge-end'"],
                         env={k: v.encode() for k, v in env.items()}, capture_output=True).stdout
    fast = _decode_simple(out)
    assert _decode_general(out) == decode_record(out)
    if fast is not None:
        assert fast == _decode_general(out)
    for k, v in env.items():
        assert decode_record(out)[k] == v
