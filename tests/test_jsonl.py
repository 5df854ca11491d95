"""The JSON-lines codec: golden bytes both ways, limits, hypothesis round trips."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nhrpbridge.errors import LocalProtocolError, RemoteProtocolError
from nhrpbridge.protocol import jsonl

GOLDEN = [
    ({"op": "hello", "version": 1}, b'{"op":"hello","version":1}\n'),
    ({"type": "link-up", "seq": 3, "link": {"remote-host": "198.51.100.11", "up": True}},
     b'{"link":{"remote-host":"198.51.100.11","up":true},"seq":3,"type":"link-up"}\n'),
    ({"remote-id": "CN=caf\u00e9"}, '{"remote-id":"CN=caf\u00e9"}\n'.encode()),
]


@pytest.mark.parametrize("msg, data", GOLDEN)
def test_golden_both_ways(msg, data):
    assert jsonl.encode(msg) == data
    assert jsonl.Decoder().messages(data) == [msg]


def test_split_anywhere_gives_the_same_messages():
    data = b"".join(d for _, d in GOLDEN)
    for cut in range(len(data)):
        dec = jsonl.Decoder()
        assert dec.messages(data[:cut]) + dec.messages(data[cut:]) == [m for m, _ in GOLDEN]


def test_line_limit_is_fatal_even_without_newline():
    dec = jsonl.Decoder(max_line=10)
    with pytest.raises(RemoteProtocolError) as exc:
        dec.messages(b"x" * 11)
    assert exc.value.fatal and exc.value.code == "line-too-long"


def test_bad_line_is_not_fatal_and_next_line_survives():
    dec = jsonl.Decoder()
    dec.feed(b'nope\n{"a":1}\n')
    with pytest.raises(RemoteProtocolError) as exc:
        dec.next_message()
    assert not exc.value.fatal
    assert dec.next_message() == {"a": 1}


def test_encode_refuses_non_objects():
    with pytest.raises(LocalProtocolError):
        jsonl.encode([1])
    with pytest.raises(LocalProtocolError):
        jsonl.encode({"x": object()})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=15)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(), json_values, max_size=5))
def test_round_trip(msg):
    assert jsonl.Decoder().messages(jsonl.encode(msg)) == [msg]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_messages_or_remote_errors(data):
    dec = jsonl.Decoder(max_line=64)
    dec.feed(data)
    for _ in range(len(data) + 1):
        try:
            if dec.next_message() is None:
                break
        except RemoteProtocolError as exc:
            if exc.fatal:
                break
