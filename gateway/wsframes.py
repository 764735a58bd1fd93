"""A minimal RFC 6455 frame codec, for the upstream side of the ASGI front-end's WebSocket proxy.

Under an ASGI server the client side of a WebSocket is the server's business (it hands the app
whole messages); the gateway speaks the wire protocol only to the upstream, as a *client*:
every frame it sends is masked (RFC 6455 §5.3) and every frame it receives must not be.

* :func:`encode_frame` builds one frame (masked when given a key); :func:`client_frame` picks a
  fresh random key, as a client must.
* :class:`FrameParser` turns a byte stream into :class:`Frame` values, incrementally; it checks
  the framing rules (reserved bits, opcodes, control-frame size and fragmentation, masking
  direction, minimal 64-bit length) and a size limit before buffering a payload.
* :class:`MessageReader` adds reassembly: data frames and their continuations come out as one
  message (text validated as UTF-8), control frames (close, ping, pong) as they arrive, even in
  the middle of a fragmented message.

Violations raise :class:`ProtocolError` carrying the close code to send (1002, 1007, 1009).
No extensions are negotiated, so any reserved bit is an error.
"""

from __future__ import annotations

import os
import struct
from typing import Final

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA
_OPCODES: Final = frozenset({OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG})

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_NO_STATUS: Final = 1005  # never on the wire: "the close frame carried no code"
CLOSE_ABNORMAL: Final = 1006  # never on the wire: "the connection dropped without a close"
CLOSE_INVALID_DATA: Final = 1007
CLOSE_TOO_BIG: Final = 1009
CLOSE_INTERNAL_ERROR: Final = 1011

MAX_CONTROL_PAYLOAD: Final = 125
_U16: Final = struct.Struct("!H")
_U64: Final = struct.Struct("!Q")


class ProtocolError(Exception):
    """The peer broke RFC 6455; ``code`` is the close code to answer with."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        super().__init__(message)


class Frame:
    """One frame (from :class:`FrameParser`) or one whole message (from :class:`MessageReader`,
    where a data message has ``opcode`` text or binary and ``fin`` true)."""

    __slots__ = ("fin", "opcode", "payload")

    def __init__(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        self.opcode = opcode
        self.payload = payload
        self.fin = fin

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return (self.opcode, self.payload, self.fin) == (other.opcode, other.payload, other.fin)

    def __hash__(self) -> int:
        return hash((self.opcode, self.payload, self.fin))

    def __repr__(self) -> str:
        return f"Frame(opcode={self.opcode:#x}, {len(self.payload)} bytes, fin={self.fin})"


def apply_mask(data: bytes, key: bytes) -> bytes:
    """XOR ``data`` with the repeating 4-byte ``key`` (masking and unmasking are the same)."""
    n = len(data)
    if n == 0:
        return b""
    if len(key) != 4:
        raise ValueError("a masking key is 4 bytes")
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")).to_bytes(n, "little")


def encode_frame(
    opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = None
) -> bytes:
    """One frame; masked with the 4-byte ``mask`` when given (frames a client sends)."""
    if opcode not in _OPCODES:
        raise ValueError(f"unknown opcode {opcode:#x}")
    n = len(payload)
    if opcode >= OP_CLOSE and (n > MAX_CONTROL_PAYLOAD or not fin):
        raise ValueError("control frames carry at most 125 bytes and are never fragmented")
    b0 = (0x80 if fin else 0) | opcode
    mbit = 0x80 if mask is not None else 0
    if n < 126:
        head = bytes((b0, mbit | n))
    elif n < 1 << 16:
        head = bytes((b0, mbit | 126)) + _U16.pack(n)
    else:
        head = bytes((b0, mbit | 127)) + _U64.pack(n)
    if mask is None:
        return head + payload
    return head + mask + apply_mask(payload, mask)


def client_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A frame as a client sends it: masked with a fresh random key."""
    return encode_frame(opcode, payload, fin=fin, mask=os.urandom(4))


def sendable_close_code(code: int) -> bool:
    """May ``code`` appear in a close frame? (RFC 6455 §7.4; 1004-1006 and 1015 may not.)"""
    return code in (1000, 1001, 1002, 1003) or 1007 <= code <= 1014 or 3000 <= code <= 4999


def close_payload(code: int = CLOSE_NORMAL, reason: str = "") -> bytes:
    """Payload of a close frame; the reason is cut (on a character boundary) to fit 125 bytes."""
    if not sendable_close_code(code):
        raise ValueError(f"close code {code} may not be sent")
    data = reason.encode("utf-8")
    if len(data) > MAX_CONTROL_PAYLOAD - 2:
        data = data[: MAX_CONTROL_PAYLOAD - 2].decode("utf-8", "ignore").encode("utf-8")
    return _U16.pack(code) + data


def parse_close(payload: bytes) -> tuple[int, str]:
    """Code and reason of a received close frame; (1005, "") when it carries none."""
    if not payload:
        return CLOSE_NO_STATUS, ""
    if len(payload) == 1:
        raise ProtocolError(CLOSE_PROTOCOL_ERROR, "close frame with a 1-byte payload")
    (code,) = _U16.unpack_from(payload)
    if not sendable_close_code(code):
        raise ProtocolError(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(CLOSE_INVALID_DATA, "close reason is not UTF-8") from None
    return code, reason


class FrameParser:
    """Incremental frame parser. ``masked``: whether received frames must be masked (a server
    reading a client) or must not be (a client reading a server, the gateway's case)."""

    __slots__ = ("_buf", "masked", "max_size")

    def __init__(self, *, max_size: int = 16 * 1024 * 1024, masked: bool = False) -> None:
        self.max_size = max_size
        self.masked = masked
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        """Every frame completed by ``data`` (possibly none)."""
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            if b0 & 0x70:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "reserved bits set (no extension)")
            opcode = b0 & 0x0F
            if opcode not in _OPCODES:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
            fin = bool(b0 & 0x80)
            is_masked = bool(b1 & 0x80)
            if is_masked != self.masked:
                raise ProtocolError(
                    CLOSE_PROTOCOL_ERROR,
                    "unmasked frame from a client" if self.masked else "masked frame from a server",
                )
            n = b1 & 0x7F
            head = 2
            if opcode >= OP_CLOSE and (n > MAX_CONTROL_PAYLOAD or not fin):
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "oversized or fragmented control frame")
            if n == 126:
                if end - pos < 4:
                    break
                (n,) = _U16.unpack_from(buf, pos + 2)
                if n < 126:
                    raise ProtocolError(CLOSE_PROTOCOL_ERROR, "non-minimal 16-bit length")
                head = 4
            elif n == 127:
                if end - pos < 10:
                    break
                (n,) = _U64.unpack_from(buf, pos + 2)
                if n >> 63:
                    raise ProtocolError(CLOSE_PROTOCOL_ERROR, "64-bit length with the top bit set")
                if n < 1 << 16:
                    raise ProtocolError(CLOSE_PROTOCOL_ERROR, "non-minimal 64-bit length")
                head = 10
            if n > self.max_size:
                raise ProtocolError(CLOSE_TOO_BIG, f"frame of {n} bytes exceeds {self.max_size}")
            if is_masked:
                head += 4
            if end - pos < head + n:
                break
            start = pos + head
            payload = bytes(buf[start : start + n])
            if is_masked:
                payload = apply_mask(payload, bytes(buf[start - 4 : start]))
            frames.append(Frame(opcode, payload, fin))
            pos = start + n
        if pos:
            del buf[:pos]
        return frames


class MessageReader:
    """Frames to messages: reassembles fragmented data messages, passes control frames through.

    ``max_size`` bounds a whole message (and so every frame)."""

    __slots__ = ("_opcode", "_parts", "_size", "max_size", "parser")

    def __init__(self, *, max_size: int = 16 * 1024 * 1024, masked: bool = False) -> None:
        self.max_size = max_size
        self.parser = FrameParser(max_size=max_size, masked=masked)
        self._opcode: int | None = None  # opcode of the fragmented message in progress
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> list[Frame]:
        out: list[Frame] = []
        for frame in self.parser.feed(data):
            op = frame.opcode
            if op >= OP_CLOSE:
                out.append(frame)
                continue
            if op == OP_CONTINUATION:
                if self._opcode is None:
                    raise ProtocolError(CLOSE_PROTOCOL_ERROR, "continuation without a message")
            elif self._opcode is not None:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
            elif frame.fin:
                out.append(_message(op, frame.payload))
                continue
            else:
                self._opcode = op
            self._size += len(frame.payload)
            if self._size > self.max_size:
                raise ProtocolError(CLOSE_TOO_BIG, f"message exceeds {self.max_size} bytes")
            self._parts.append(frame.payload)
            if frame.fin:
                opcode = self._opcode
                assert opcode is not None
                payload = b"".join(self._parts)
                self._opcode = None
                self._parts = []
                self._size = 0
                out.append(_message(opcode, payload))
        return out


def _message(opcode: int, payload: bytes) -> Frame:
    if opcode == OP_TEXT:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(CLOSE_INVALID_DATA, "text message is not valid UTF-8") from None
    return Frame(opcode, payload, True)
