"""VICI codec: byte-exact vectors both ways, limits, hypothesis round trips and fuzz."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nhrpbridge.errors import LocalProtocolError, RemoteProtocolError
from nhrpbridge.protocol.vici import (
    MAX_SEGMENT,
    Decoder,
    Packet,
    PacketType,
    decode_message,
    decode_packet,
    encode_message,
    encode_packet,
)

# the VICI README's own example
README_MSG = {"key1": b"value1", "section1": {"sub-section": {"key2": b"value2"},
                                              "list1": [b"item1", b"item2"]}}
README_BYTES = bytes.fromhex(
    "03046b657931000676616c756531010873656374696f6e31010b7375622d73656374696f6e03046b657932"
    "000676616c7565320204056c697374310500056974656d310500056974656d320602")

# nhrpd's connect sequence, captured from FRR 8.4.4
NHRPD_CONNECT = [
    (bytes.fromhex("0000001703156368696c642d73746174652d696e7374616c6c6564"),
     Packet(PacketType.EVENT_REGISTER, "child-state-installed")),
    (b"\x00\x00\x00\x15\x03\x13child-state-rekeyed",
     Packet(PacketType.EVENT_REGISTER, "child-state-rekeyed")),
    (b"\x00\x00\x00\x18\x03\x16child-state-destroying",
     Packet(PacketType.EVENT_REGISTER, "child-state-destroying")),
    (bytes.fromhex("0000000903076c6973742d7361"), Packet(PacketType.EVENT_REGISTER, "list-sa")),
    (bytes.fromhex("0000000a00086c6973742d736173"), Packet(PacketType.CMD_REQUEST, "list-sas")),
]
NHRPD_INITIATE = bytes.fromhex(
    "000000710008696e69746961746503056368696c640005646d76706e030774696d656f757400022d31"
    "03056173796e63000131030b696e69742d6c696d69747300013003076d792d686f7374000d3139382e35"
    "312e3130302e3131030a6f746865722d686f7374000c3139382e35312e3130302e31")
NHRPD_TERMINATE = bytes.fromhex("00000017") + b"\x00\x09terminate\x03\x03ike\x00\x05dmvpn"


def test_readme_example_both_ways():
    assert encode_message(README_MSG) == README_BYTES
    assert decode_message(README_BYTES) == README_MSG


@pytest.mark.parametrize("data, packet", NHRPD_CONNECT)
def test_nhrpd_connect_packets_both_ways(data, packet):
    assert encode_packet(packet) == data
    d = Decoder()
    d.feed(data)
    assert d.next_packet() == packet


def test_nhrpd_initiate_and_terminate_decode():
    d = Decoder()
    d.feed(NHRPD_INITIATE + NHRPD_TERMINATE)
    init = d.next_packet()
    assert init.name == "initiate" and init.message == {
        "child": b"dmvpn", "timeout": b"-1", "async": b"1", "init-limits": b"0",
        "my-host": b"198.51.100.11", "other-host": b"198.51.100.1"}
    assert list(init.message) == ["child", "timeout", "async", "init-limits", "my-host", "other-host"]
    assert encode_packet(init) == NHRPD_INITIATE
    term = d.next_packet()
    assert term == Packet(PacketType.CMD_REQUEST, "terminate", {"ike": b"dmvpn"})
    assert d.next_packet() is None


def test_the_five_connect_packets_in_one_read_split_anywhere():
    stream = b"".join(d for d, _ in NHRPD_CONNECT)
    for cut in range(len(stream)):
        d = Decoder()
        got = []
        for part in (stream[:cut], stream[cut:]):
            d.feed(part)
            while (p := d.next_packet()) is not None:
                got.append(p)
        assert got == [p for _, p in NHRPD_CONNECT]


def test_segment_limit_checked_on_the_header():
    d = Decoder()
    d.feed((MAX_SEGMENT + 1).to_bytes(4, "big") + b"\x00")
    with pytest.raises(RemoteProtocolError) as exc:
        d.next_packet()
    assert exc.value.fatal and exc.value.code == "vici-too-large"
    d = Decoder()
    d.feed(MAX_SEGMENT.to_bytes(4, "big"))
    assert d.next_packet() is None                 # exactly the limit waits for its bytes


@pytest.mark.parametrize("segment, code", [
    (b"", "vici-empty"),
    (b"\x09", "vici-bad-type"),
    (b"\x00\x05abc", "vici-truncated"),
    (b"\x00\x01x\x01\x01s", "vici-unbalanced"),
    (b"\x00\x01x\x02", "vici-unbalanced"),
    (b"\x00\x01x\x03\x01k\x00\x05ab", "vici-truncated"),
    (b"\x00\x01x\x03\x01k\x00\x00\x03\x01k\x00\x00", "vici-duplicate"),
    (b"\x00\x01x\x04\x01l\x04\x01m", "vici-bad-list"),
    (b"\x00\x01x\x09", "vici-bad-element"),
    (b"\x00\x01\xff", "vici-bad-name"),
    (b"\x05junk", "vici-trailing"),
])
def test_malformed_segments(segment, code):
    with pytest.raises(RemoteProtocolError) as exc:
        decode_packet(segment)
    assert exc.value.code == code and exc.value.fatal


def test_encode_limits_are_local_errors():
    with pytest.raises(LocalProtocolError):
        encode_message({"k" * 256: "v"})
    with pytest.raises(LocalProtocolError):
        encode_message({"k": b"x" * 65536})
    with pytest.raises(LocalProtocolError):
        encode_message({"k": 1.5})
    with pytest.raises(LocalProtocolError):
        encode_packet(Packet(PacketType.CMD_RESPONSE, None, {f"k{i}": b"x" * 60000 for i in range(9)}))
    assert encode_message({"a": 7, "b": True, "c": "é"}) == (
        b"\x03\x01a\x00\x017\x03\x01b\x00\x03yes\x03\x01c\x00\x02\xc3\xa9")


names = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20)
trees = st.recursive(
    st.binary(max_size=40) | st.lists(st.binary(max_size=10), max_size=4),
    lambda inner: st.dictionaries(names, inner, max_size=4), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(names, trees, max_size=5))
def test_round_trip(tree):
    assert decode_message(encode_message(tree)) == tree
    for ptype in (PacketType.CMD_REQUEST, PacketType.EVENT):
        p = Packet(ptype, "x", tree)
        d = Decoder()
        d.feed(encode_packet(p))
        assert d.next_packet() == p


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_packets_or_remote_errors(data):
    d = Decoder()
    d.feed(data)
    try:
        while d.next_packet() is not None:
            pass
    except RemoteProtocolError:
        pass
