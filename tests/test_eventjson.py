"""API event lines built from cached record JSON are exactly the general encoding."""
from hypothesis import given, settings
from hypothesis import strategies as st

from nhrpbridge.eventjson import EventEncoder
from nhrpbridge.protocol import jsonl
from nhrpbridge.sa import ChildSa, Event, IkeSa, Link
from nhrpbridge.wire import event_dict

# text as pluto's bytes become it: any UTF-8, and undecodable bytes as surrogate escapes
texts = st.one_of(st.text(max_size=12),
                  st.binary(max_size=12).map(lambda b: b.decode("utf-8", "surrogateescape")))


@st.composite
def events(draw):
    ike = IkeSa(draw(st.integers(1, 9)), draw(texts), "c", "192.0.2.1", draw(texts),
                remote_id=draw(texts), serial=draw(st.none() | st.integers(1, 99)),
                initiator=draw(st.none() | st.booleans()), established=draw(st.floats(0, 1e9)))
    child = ChildSa(draw(st.integers(1, 9)), ike.uniqueid, ike.connection, "c", "192.0.2.1",
                    ike.remote_host, spi_in=draw(st.integers(0, 2**32 - 1)), local_ts=draw(texts))
    link = Link(ike.connection, "192.0.2.1", ike.remote_host, ike.remote_id,
                tuple(draw(st.lists(st.integers(1, 9), max_size=3))))
    return Event(draw(st.integers(1, 2**40)), draw(st.sampled_from(["child-up", "ike-down"])),
                 draw(st.floats(0, 2e9)), draw(st.none() | st.just(ike)),
                 draw(st.none() | st.just(child)), draw(st.none() | st.just(link)))


@settings(max_examples=300)
@given(st.lists(events(), min_size=1, max_size=4))
def test_same_bytes_as_the_general_encoding(evs):
    enc = EventEncoder()
    for ev in evs + evs:                       # the second pass comes from the cache
        assert enc.encode(ev) == jsonl.encode(event_dict(ev))


def test_another_object_never_gets_a_cached_line():
    ike = IkeSa(1, "dmvpn", "dmvpn", "192.0.2.1", "198.51.100.7", remote_id="CN=a")
    enc = EventEncoder()
    first = enc.encode(Event(1, "ike-up", 5.0, ike))
    # another object with other content gets its own JSON, never the cached one
    other = IkeSa(1, "dmvpn", "dmvpn", "192.0.2.1", "198.51.100.8", remote_id="CN=b")
    assert b"198.51.100.8" in enc.encode(Event(2, "ike-up", 6.0, other))
    assert enc.encode(Event(1, "ike-up", 5.0, ike)) == first
