"""The RFC 6455 frame codec used by the ASGI front-end's WebSocket proxy."""

from __future__ import annotations

import os

import pytest

from gateway import wsframes
from gateway.wsframes import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Frame,
    FrameParser,
    MessageReader,
    ProtocolError,
    apply_mask,
    client_frame,
    close_payload,
    encode_frame,
    parse_close,
)
from tests.support.upstream import ws_frame

# RFC 6455 §5.7 examples
HELLO_UNMASKED = bytes([0x81, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])
HELLO_MASKED = bytes([0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
HEL_LO_FRAGMENTS = bytes([0x01, 0x03, 0x48, 0x65, 0x6C, 0x80, 0x02, 0x6C, 0x6F])
PING_HELLO = bytes([0x89, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])


def test_rfc_examples_encode() -> None:
    assert encode_frame(OP_TEXT, b"Hello") == HELLO_UNMASKED
    assert encode_frame(OP_TEXT, b"Hello", mask=bytes([0x37, 0xFA, 0x21, 0x3D])) == HELLO_MASKED
    assert encode_frame(OP_TEXT, b"Hel", fin=False) + encode_frame(OP_CONTINUATION, b"lo") == (
        HEL_LO_FRAGMENTS
    )
    assert encode_frame(OP_PING, b"Hello") == PING_HELLO


def test_rfc_examples_decode() -> None:
    assert FrameParser().feed(HELLO_UNMASKED) == [Frame(OP_TEXT, b"Hello")]
    assert FrameParser(masked=True).feed(HELLO_MASKED) == [Frame(OP_TEXT, b"Hello")]
    assert FrameParser().feed(HEL_LO_FRAGMENTS) == [
        Frame(OP_TEXT, b"Hel", fin=False),
        Frame(OP_CONTINUATION, b"lo"),
    ]
    assert MessageReader().feed(HEL_LO_FRAGMENTS) == [Frame(OP_TEXT, b"Hello")]


@pytest.mark.parametrize("n", [0, 1, 125, 126, 127, 65535, 65536, 200_000])
def test_lengths_round_trip_and_match_reference(n: int) -> None:
    payload = os.urandom(n)
    key = os.urandom(4)
    plain = encode_frame(OP_BINARY, payload)
    masked = encode_frame(OP_BINARY, payload, mask=key)
    # an independent encoder (the test upstream's) produces the same bytes
    assert plain == ws_frame(OP_BINARY, payload)
    assert masked == ws_frame(OP_BINARY, payload, mask=key)
    header = 2 if n < 126 else 4 if n < 65536 else 10
    assert len(plain) == header + n
    assert FrameParser(max_size=1 << 20).feed(plain) == [Frame(OP_BINARY, payload)]
    assert FrameParser(max_size=1 << 20, masked=True).feed(masked) == [Frame(OP_BINARY, payload)]


def test_incremental_byte_by_byte() -> None:
    stream = (
        encode_frame(OP_TEXT, b"a" * 300)
        + encode_frame(OP_PING, b"p")
        + encode_frame(OP_BINARY, b"\x00" * 70_000)
    )
    parser = FrameParser()
    frames: list[Frame] = []
    for i in range(len(stream)):
        frames += parser.feed(stream[i : i + 1])
    assert frames == [
        Frame(OP_TEXT, b"a" * 300),
        Frame(OP_PING, b"p"),
        Frame(OP_BINARY, b"\x00" * 70_000),
    ]
    assert parser.buffered == 0


def test_several_frames_in_one_read() -> None:
    data = b"".join(encode_frame(OP_TEXT, str(i).encode()) for i in range(50))
    frames = MessageReader().feed(data)
    assert [f.payload for f in frames] == [str(i).encode() for i in range(50)]


def test_apply_mask_is_an_involution() -> None:
    key = b"\x01\x02\x03\x04"
    for n in (0, 1, 3, 4, 5, 1000, 1001):
        data = os.urandom(n)
        masked = apply_mask(data, key)
        assert len(masked) == n
        assert apply_mask(masked, key) == data
        assert masked == bytes(b ^ key[i % 4] for i, b in enumerate(data))
    with pytest.raises(ValueError):
        apply_mask(b"abc", b"\x00")


def test_client_frame_is_masked_with_a_fresh_key() -> None:
    a = client_frame(OP_TEXT, b"same payload")
    b = client_frame(OP_TEXT, b"same payload")
    assert a[1] & 0x80 and b[1] & 0x80
    assert a != b  # 2**-32 chance of a flake
    assert FrameParser(masked=True).feed(a) == [Frame(OP_TEXT, b"same payload")]


def test_control_frames_interleave_with_fragments() -> None:
    reader = MessageReader()
    data = (
        encode_frame(OP_BINARY, b"ab", fin=False)
        + encode_frame(OP_PING, b"x")
        + encode_frame(OP_CONTINUATION, b"cd", fin=False)
        + encode_frame(OP_PONG, b"")
        + encode_frame(OP_CONTINUATION, b"ef")
    )
    assert reader.feed(data) == [
        Frame(OP_PING, b"x"),
        Frame(OP_PONG, b""),
        Frame(OP_BINARY, b"abcdef"),
    ]
    # the reader is ready for the next message
    assert reader.feed(encode_frame(OP_TEXT, "é".encode())) == [Frame(OP_TEXT, "é".encode())]


def _code(data: bytes, **kwargs: object) -> int:
    with pytest.raises(ProtocolError) as info:
        MessageReader(**kwargs).feed(data)  # type: ignore[arg-type]
    return info.value.code


def test_framing_violations() -> None:
    assert _code(bytes([0xC1, 0x00])) == 1002  # RSV1 without an extension
    assert _code(bytes([0x83, 0x00])) == 1002  # reserved opcode 3
    assert _code(bytes([0x8B, 0x00])) == 1002  # reserved control opcode 0xB
    assert _code(HELLO_MASKED) == 1002  # a server must not mask
    assert _code(HELLO_UNMASKED, masked=True) == 1002  # a client must mask
    assert _code(bytes([0x89, 0x7E, 0x00, 0x7E]) + b"x" * 126) == 1002  # control > 125
    assert _code(bytes([0x09, 0x00])) == 1002  # fragmented control frame
    assert _code(bytes([0x82, 0x7E, 0x00, 0x05]) + b"x" * 5) == 1002  # non-minimal 16-bit
    assert _code(bytes([0x82, 0x7F]) + (5).to_bytes(8, "big") + b"x" * 5) == 1002
    assert _code(bytes([0x82, 0x7F]) + (1 << 63).to_bytes(8, "big")) == 1002
    assert _code(encode_frame(OP_CONTINUATION, b"x")) == 1002  # nothing to continue
    assert (
        _code(encode_frame(OP_TEXT, b"a", fin=False) + encode_frame(OP_TEXT, b"b")) == 1002
    )  # a new message inside a fragmented one


def test_size_limits() -> None:
    # the frame header alone is enough to refuse: the payload is never buffered
    assert _code(bytes([0x82, 0x7F]) + (1 << 40).to_bytes(8, "big"), max_size=1000) == 1009
    assert _code(encode_frame(OP_BINARY, b"x" * 1001), max_size=1000) == 1009
    fragments = encode_frame(OP_BINARY, b"x" * 600, fin=False) + encode_frame(
        OP_CONTINUATION, b"x" * 600
    )
    assert _code(fragments, max_size=1000) == 1009


def test_text_must_be_utf8() -> None:
    assert _code(encode_frame(OP_TEXT, b"\xff\xfe")) == 1007
    # a code point split across fragments is fine
    euro = "€".encode()
    data = encode_frame(OP_TEXT, euro[:1], fin=False) + encode_frame(OP_CONTINUATION, euro[1:])
    assert MessageReader().feed(data) == [Frame(OP_TEXT, euro)]
    # binary is never checked
    assert MessageReader().feed(encode_frame(OP_BINARY, b"\xff")) == [Frame(OP_BINARY, b"\xff")]


def test_close_payloads() -> None:
    assert parse_close(b"") == (1005, "")
    assert parse_close(close_payload(1000)) == (1000, "")
    assert parse_close(close_payload(4001, "bye ✓")) == (4001, "bye ✓")
    with pytest.raises(ProtocolError) as info:
        parse_close(b"\x03")
    assert info.value.code == 1002
    for bad in (999, 1004, 1005, 1006, 1015, 2999, 5000):
        with pytest.raises(ProtocolError):
            parse_close(bad.to_bytes(2, "big"))
        with pytest.raises(ValueError):
            close_payload(bad)
    with pytest.raises(ProtocolError) as info:
        parse_close(b"\x03\xe8\xff")
    assert info.value.code == 1007
    # a long reason is cut on a character boundary to fit a control frame
    payload = close_payload(1000, "é" * 100)
    assert len(payload) <= 125
    code, reason = parse_close(payload)
    assert code == 1000 and set(reason) == {"é"}
    assert FrameParser().feed(encode_frame(OP_CLOSE, payload)) == [Frame(OP_CLOSE, payload)]


def test_encoder_refuses_invalid_frames() -> None:
    with pytest.raises(ValueError):
        encode_frame(OP_PING, b"x" * 126)
    with pytest.raises(ValueError):
        encode_frame(OP_CLOSE, b"", fin=False)
    with pytest.raises(ValueError):
        encode_frame(0x3, b"")


def test_sendable_codes() -> None:
    assert wsframes.sendable_close_code(1000)
    assert wsframes.sendable_close_code(1011)
    assert wsframes.sendable_close_code(3000)
    assert wsframes.sendable_close_code(4999)
    assert not wsframes.sendable_close_code(1005)
    assert not wsframes.sendable_close_code(1006)
