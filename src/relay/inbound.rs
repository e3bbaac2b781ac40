//! One direction's frame stream: parse frame headers, enforce RFC 6455 and
//! the message limits, and compact what is to be forwarded in place.
//!
//! Payload bytes are forwarded exactly as they arrived (a client's frames
//! keep the client's mask); they are only *read* when a feature needs them:
//! UTF-8 or JSON validation, the gateway's own pongs, `app_ping`, close
//! frames. This module never does I/O; the relay hands it a buffer.
//!
//! Compressed messages (permessage-deflate, RSV1) from a sender the relay
//! inspects are inflated as they pass (see `inflate`): the limits and the
//! validation judge the inflated text, and the frames still go out as
//! they came.

use crate::relay::inflate::{Corrupt, Inflater, Inspect};
use crate::relay::peer::Spill;
use crate::relay::rate::Bucket;
use crate::ws::close::{self, ClosePayload, code as close_code};
use crate::ws::frame::{self, Header, MAX_CONTROL_PAYLOAD, opcode};
use crate::ws::utf8::{InvalidUtf8, Utf8Validator};

/// Payload of the gateway's heartbeat pings: a pong carrying exactly this is
/// the gateway's own and is consumed, never forwarded.
pub const HEARTBEAT_PAYLOAD: &[u8] = b"wsgate-heartbeat";

/// A framing or policy violation by the sending peer: the close code it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub reason: &'static str,
}

impl Violation {
    fn protocol(reason: &'static str) -> Violation {
        Violation {
            code: close_code::PROTOCOL_ERROR,
            reason,
        }
    }
}

/// What the direction needs to know about its sender and the policy.
pub struct DirCtx<'a> {
    /// Frames come from the client (so they must be masked).
    pub from_client: bool,
    pub max_message_bytes: u64,
    pub validate_utf8: bool,
    pub validate_json: bool,
    /// permessage-deflate was negotiated: RSV1 may mark compressed messages.
    pub deflate: bool,
    /// Compressed messages from this sender are inflated and judged like
    /// the others; `None`: they pass unjudged (`permessage_deflate =
    /// "passthrough"`, or no deflate).
    pub inspect: Option<Inspect>,
    /// `app_ping` text, only on the client direction.
    pub app_ping: Option<&'a [u8]>,
}

/// What one call to [`Inbound::process`] saw.
#[derive(Debug, Default)]
pub struct Events {
    pub messages: u64,
    pub payload_bytes: u64,
    /// A close frame passed through: its code (1005 for an empty one) and
    /// reason bytes' location is not kept; the code is what metrics need.
    pub close: Option<u16>,
    /// A pong answering the gateway's own heartbeat ping was consumed.
    pub heartbeat_pong: bool,
    /// `app_ping` messages consumed (each owed an `app_pong`).
    pub app_pings: u32,
}

/// A data message in progress (between its first and its final frame).
#[derive(Debug, Clone, Copy)]
struct Msg {
    text: bool,
    compressed: bool,
    len: u64,
}

/// A compressed single-frame text message small enough to be `app_ping`
/// is inflated whole before its header goes out, so it can be consumed.
const APP_PING_COMPRESSED_MAX: u64 = 128;

/// The inflated start of a message that may be `app_ping`.
struct Tap {
    buf: [u8; MAX_CONTROL_PAYLOAD],
    len: usize,
    /// More came than `buf` holds: not `app_ping`.
    over: bool,
}

/// A text message held back until it is known to be valid JSON.
#[derive(Debug, Default)]
struct Held {
    raw: Vec<u8>,
    payload: Vec<u8>,
}

/// Parser state of one direction; lives as long as the connection.
#[derive(Debug, Default)]
pub struct Inbound {
    /// Bytes of an incomplete header or captured frame from the last read.
    pub carry: Vec<u8>,
    /// Payload bytes still to come of the frame being forwarded.
    remaining: u64,
    frame_mask: Option<[u8; 4]>,
    /// Offset in the current frame's payload, modulo 4: only the mask's
    /// phase needs it (a byte instead of a u64 pays for `inflater`).
    frame_off: u8,
    /// The current data frame ends its message.
    frame_fin: bool,
    /// The current frame's payload still needs UTF-8 validation.
    check_utf8: bool,
    msg: Option<Msg>,
    utf8: Utf8Validator,
    held: Option<Box<Held>>,
    /// The current frame's payload still needs inflating.
    check_inflate: bool,
    /// The compressed message in progress's inflater; kept between messages
    /// only for a sender with context takeover.
    inflater: Option<Box<Inflater>>,
}

enum Captured {
    Forward,
    Consume,
}

impl Inbound {
    /// The forwarded stream stopped inside a frame: nothing may be injected
    /// toward the receiver until it completes.
    pub fn mid_frame(&self) -> bool {
        self.remaining > 0 && self.held.is_none()
    }

    /// A data message is in progress, so a data frame may not be injected.
    pub fn mid_message(&self) -> bool {
        self.msg.is_some() && self.held.is_none()
    }

    /// Close-only parsing, for when the gateway has started the close itself
    /// and drops what the peer still sends: frames are only delimited (no
    /// rule checked, no payload read) to notice the peer's close frame, since
    /// once both close frames have passed the server closes the TCP
    /// connection at once (RFC 6455 section 7.1.1) instead of waiting for the
    /// peer's FIN. `buf` is the carry followed by new bytes, as for
    /// [`Inbound::process`]. True at the header of a close frame. A header
    /// that does not parse ends the scan for good: the rest is dropped and
    /// the close deadline ends the link. After a violation by this sender
    /// the stream may be out of step (the rest of that read was dropped);
    /// a misread then at worst ends the link early, once the gateway has
    /// written all it owes that peer, as RFC 6455 allows toward a peer that
    /// broke the protocol.
    pub fn scan_for_close(&mut self, buf: &[u8]) -> bool {
        let mut r = 0;
        while r < buf.len() {
            if self.remaining > 0 {
                let k = self.remaining.min((buf.len() - r) as u64);
                self.remaining -= k;
                r += k as usize;
                continue;
            }
            match frame::parse_header(&buf[r..]) {
                Ok(Some(h)) if h.opcode == opcode::CLOSE => return true,
                Ok(Some(h)) => {
                    self.remaining = h.payload_len;
                    r += h.header_len;
                }
                Ok(None) => {
                    self.carry.extend_from_slice(&buf[r..]);
                    break;
                }
                Err(_) => {
                    self.remaining = u64::MAX;
                    break;
                }
            }
        }
        false
    }

    /// Processes `buf` (the carry from the last call followed by new bytes),
    /// compacting the bytes to forward into `buf[..w]` and returning `w`,
    /// plus the violation that stopped it, if any. Bytes before a violation
    /// are still forwarded: a message accepted is never lost. A held (JSON)
    /// message that completes is appended to `spill` after `buf[..w]`, which
    /// is then moved there too, so order is kept.
    pub fn process(
        &mut self,
        buf: &mut [u8],
        ctx: &DirCtx<'_>,
        bucket: &mut Option<Box<Bucket>>,
        now: tokio::time::Instant,
        ev: &mut Events,
        spill: &mut Spill,
    ) -> (usize, Option<Violation>) {
        let len = buf.len();
        let (mut r, mut w) = (0usize, 0usize);
        loop {
            if self.remaining > 0 {
                let k = self.remaining.min((len - r) as u64) as usize;
                if k == 0 {
                    break;
                }
                if self.check_utf8 && self.validate_payload(&buf[r..r + k]).is_err() {
                    return (w, Some(invalid_utf8()));
                }
                if self.check_inflate
                    && let Err(v) = self.inflate(Some(&buf[r..r + k]), ctx, None)
                {
                    return (w, Some(v));
                }
                if let Some(h) = self.held.as_mut() {
                    h.raw.extend_from_slice(&buf[r..r + k]);
                    // A compressed message's held payload is its inflated text.
                    if !self.msg.is_some_and(|m| m.compressed) {
                        let at = h.payload.len();
                        h.payload.extend_from_slice(&buf[r..r + k]);
                        if let Some(m) = self.frame_mask {
                            frame::apply_mask(&mut h.payload[at..], m, self.frame_off.into());
                        }
                    }
                } else {
                    buf.copy_within(r..r + k, w);
                    w += k;
                }
                r += k;
                self.frame_off = ((usize::from(self.frame_off) + k) % 4) as u8;
                self.remaining -= k as u64;
                if self.remaining > 0 {
                    break;
                }
                if let Err(v) = self.end_frame(ctx, ev, buf, &mut w, spill, now) {
                    return (w, Some(v));
                }
                continue;
            }
            if r == len {
                break;
            }
            let h = match frame::parse_header(&buf[r..]) {
                Ok(Some(h)) => h,
                Ok(None) => {
                    self.carry.extend_from_slice(&buf[r..]);
                    break;
                }
                Err(e) => {
                    return (
                        w,
                        Some(Violation::protocol(match e {
                            frame::FrameError::ReservedOpcode => "reserved opcode",
                            frame::FrameError::ControlTooLong => "control frame over 125 bytes",
                            frame::FrameError::ControlFragmented => "fragmented control frame",
                            frame::FrameError::LengthOverflow => "invalid payload length",
                        })),
                    );
                }
            };
            if let Err(v) = self.check_header(&h, ctx) {
                return (w, Some(v));
            }
            let avail = len - r;
            if self.wants_capture(&h, ctx) {
                let total = h.header_len + h.payload_len as usize;
                if avail < total {
                    self.carry.extend_from_slice(&buf[r..]);
                    break;
                }
                match self.inspect(&buf[r..r + total], &h, ctx, bucket, now, ev) {
                    Ok(Captured::Forward) => {
                        buf.copy_within(r..r + total, w);
                        w += total;
                    }
                    Ok(Captured::Consume) => {}
                    Err(v) => return (w, Some(v)),
                }
                r += total;
                continue;
            }
            // A data frame, forwarded as it streams in.
            let total = h.header_len + h.payload_len as usize;
            let maybe_ping = self.maybe_compressed_app_ping(&h, ctx);
            if maybe_ping && avail < total {
                self.carry.extend_from_slice(&buf[r..]);
                break;
            }
            // A possible app_ping takes its rate token only once it is known
            // not to be one (app_ping is never rate-limited).
            let mut no_bucket = None;
            let frame_bucket = if maybe_ping {
                &mut no_bucket
            } else {
                &mut *bucket
            };
            if let Err(v) = self.start_data_frame(&h, ctx, frame_bucket, now) {
                return (w, Some(v));
            }
            ev.payload_bytes += h.payload_len;
            // Inflate a whole compressed frame before its header goes out,
            // like the UTF-8 check below.
            if self.check_inflate && avail >= total {
                let p = &buf[r + h.header_len..r + total];
                let mut tap = maybe_ping.then_some(Tap {
                    buf: [0; MAX_CONTROL_PAYLOAD],
                    len: 0,
                    over: false,
                });
                let done = self
                    .inflate(Some(p), ctx, tap.as_mut())
                    .and_then(|()| match h.fin {
                        true => self.inflate(None, ctx, tap.as_mut()),
                        false => Ok(()),
                    });
                if let Err(v) = done {
                    self.remaining = 0;
                    return (w, Some(v));
                }
                self.check_inflate = false;
                if let Some(t) = tap
                    && !t.over
                    && ctx.app_ping == Some(&t.buf[..t.len])
                {
                    // Consumed whole: nothing of it goes out.
                    self.remaining = 0;
                    self.msg = None;
                    self.held = None;
                    self.release_inflater(ctx);
                    ev.payload_bytes -= h.payload_len;
                    ev.app_pings += 1;
                    r += total;
                    continue;
                }
                if maybe_ping
                    && let Some(b) = bucket.as_mut()
                    && !b.take_message(h.payload_len, now)
                {
                    self.remaining = 0;
                    return (w, Some(rate_limited()));
                }
            }
            // Validate a whole frame before its header goes out, so a bad
            // frame is never half-forwarded.
            if self.check_utf8 && avail >= h.header_len + h.payload_len as usize {
                let p = &buf[r + h.header_len..r + h.header_len + h.payload_len as usize];
                // A final frame must also end on a character boundary.
                if self.validate_payload(p).is_err() || (h.fin && self.utf8.finish().is_err()) {
                    // Nothing of this frame went out: the receiver's stream
                    // is still at a frame boundary, so it can get a close.
                    self.remaining = 0;
                    return (w, Some(invalid_utf8()));
                }
                self.check_utf8 = false;
            }
            if let Some(held) = self.held.as_mut() {
                held.raw.extend_from_slice(&buf[r..r + h.header_len]);
            } else {
                buf.copy_within(r..r + h.header_len, w);
                w += h.header_len;
            }
            r += h.header_len;
            if h.payload_len == 0
                && let Err(v) = self.end_frame(ctx, ev, buf, &mut w, spill, now)
            {
                return (w, Some(v));
            }
        }
        (w, None)
    }

    /// RFC 6455 section 5.2-5.4 rules that depend on the sender and on the
    /// message in progress, and the size limit.
    fn check_header(&self, h: &Header, ctx: &DirCtx<'_>) -> Result<(), Violation> {
        if ctx.from_client && h.mask.is_none() {
            return Err(Violation::protocol("client frame not masked"));
        }
        if !ctx.from_client && h.mask.is_some() {
            return Err(Violation::protocol("server frame masked"));
        }
        if h.rsv & 0b011 != 0 {
            return Err(Violation::protocol("reserved bits set"));
        }
        if h.rsv & 0b100 != 0 && !(ctx.deflate && matches!(h.opcode, opcode::TEXT | opcode::BINARY))
        {
            // RFC 7692 section 6.1: RSV1 only on a message's first frame.
            return Err(Violation::protocol(
                if ctx.deflate && h.opcode == opcode::CONTINUATION {
                    "RSV1 set on a continuation frame"
                } else {
                    "RSV1 set without a negotiated extension"
                },
            ));
        }
        match h.opcode {
            opcode::CONTINUATION if self.msg.is_none() => {
                Err(Violation::protocol("continuation frame without a message"))
            }
            opcode::TEXT | opcode::BINARY if self.msg.is_some() => Err(Violation::protocol(
                "new message inside a fragmented message",
            )),
            opcode::CONTINUATION | opcode::TEXT | opcode::BINARY => {
                let so_far = self.msg.map_or(0, |m| m.len);
                let compressed = self.msg.map_or(h.rsv & 0b100 != 0, |m| m.compressed);
                // An inspected compressed message is limited on its inflated
                // size; on the wire it may be a little larger than that
                // (stored blocks), never much.
                let limit = match compressed && ctx.inspect.is_some() {
                    true => ctx
                        .max_message_bytes
                        .saturating_add(ctx.max_message_bytes / 64 + 64),
                    false => ctx.max_message_bytes,
                };
                if so_far.saturating_add(h.payload_len) > limit {
                    Err(Violation {
                        code: close_code::MESSAGE_TOO_BIG,
                        reason: "message too big",
                    })
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// Frames whose payload must be seen whole before deciding to forward:
    /// control frames, and on the client side a text frame that may be the
    /// `app_ping`.
    fn wants_capture(&self, h: &Header, ctx: &DirCtx<'_>) -> bool {
        if frame::opcode::is_control(h.opcode) {
            return true;
        }
        match ctx.app_ping {
            Some(p) => {
                h.opcode == opcode::TEXT && h.fin && h.rsv == 0 && h.payload_len == p.len() as u64
            }
            None => false,
        }
    }

    fn inspect(
        &mut self,
        frame_bytes: &[u8],
        h: &Header,
        ctx: &DirCtx<'_>,
        bucket: &mut Option<Box<Bucket>>,
        now: tokio::time::Instant,
        ev: &mut Events,
    ) -> Result<Captured, Violation> {
        let n = h.payload_len as usize;
        let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
        payload[..n].copy_from_slice(&frame_bytes[h.header_len..]);
        if let Some(m) = h.mask {
            frame::apply_mask(&mut payload[..n], m, 0);
        }
        let payload = &payload[..n];
        match h.opcode {
            opcode::PONG if payload == HEARTBEAT_PAYLOAD => {
                ev.heartbeat_pong = true;
                Ok(Captured::Consume)
            }
            opcode::PING | opcode::PONG => Ok(Captured::Forward),
            opcode::CLOSE => match close::parse_close(payload) {
                ClosePayload::Empty => {
                    ev.close = Some(close_code::NO_STATUS);
                    Ok(Captured::Forward)
                }
                ClosePayload::Code(c) => {
                    ev.close = Some(c);
                    Ok(Captured::Forward)
                }
                ClosePayload::Invalid(code) => Err(Violation {
                    code,
                    reason: "invalid close frame",
                }),
            },
            _ => {
                // A whole single-frame text message the size of app_ping.
                if ctx.app_ping == Some(payload) {
                    ev.app_pings += 1;
                    return Ok(Captured::Consume);
                }
                if bucket
                    .as_mut()
                    .is_some_and(|b| !b.take_message(n as u64, now))
                {
                    return Err(rate_limited());
                }
                if (ctx.validate_utf8 || ctx.validate_json) && std::str::from_utf8(payload).is_err()
                {
                    return Err(invalid_utf8());
                }
                if ctx.validate_json && !ctx.json_ok(payload) {
                    return Err(invalid_json());
                }
                ev.messages += 1;
                ev.payload_bytes += n as u64;
                Ok(Captured::Forward)
            }
        }
    }

    fn start_data_frame(
        &mut self,
        h: &Header,
        ctx: &DirCtx<'_>,
        bucket: &mut Option<Box<Bucket>>,
        now: tokio::time::Instant,
    ) -> Result<(), Violation> {
        if h.opcode != opcode::CONTINUATION {
            let text = h.opcode == opcode::TEXT;
            let compressed = h.rsv & 0b100 != 0;
            if let Some(b) = bucket.as_mut()
                && !b.take_message(h.payload_len, now)
            {
                return Err(rate_limited());
            }
            self.msg = Some(Msg {
                text,
                compressed,
                len: 0,
            });
            self.utf8 = Utf8Validator::default();
            let inspected = compressed && ctx.inspect.is_some();
            if text && (!compressed || inspected) && ctx.validate_json && ctx.from_client {
                self.held = Some(Box::default());
            }
            if inspected {
                self.inflater
                    .get_or_insert_with(Inflater::take)
                    .begin_message();
            }
        } else if let Some(b) = bucket.as_mut()
            && !b.take_bytes(h.payload_len, now)
        {
            return Err(rate_limited());
        }
        let msg = self.msg.as_mut().expect("checked by check_header");
        msg.len += h.payload_len;
        self.remaining = h.payload_len;
        self.frame_mask = h.mask;
        self.frame_off = 0;
        self.frame_fin = h.fin;
        // A held message is validated whole (as JSON) at its end.
        self.check_utf8 = msg.text && !msg.compressed && ctx.validate_utf8 && self.held.is_none();
        self.check_inflate = msg.compressed && ctx.inspect.is_some();
        Ok(())
    }

    /// The current data frame's payload is complete.
    fn end_frame(
        &mut self,
        ctx: &DirCtx<'_>,
        ev: &mut Events,
        buf: &mut [u8],
        w: &mut usize,
        spill: &mut Spill,
        now: tokio::time::Instant,
    ) -> Result<(), Violation> {
        self.check_utf8 = false;
        self.check_inflate = false;
        if !self.frame_fin {
            return Ok(());
        }
        if self
            .msg
            .is_some_and(|m| m.compressed && ctx.inspect.is_some())
            && self.inflater.as_ref().is_some_and(|i| !i.message_done())
        {
            self.inflate(None, ctx, None)?;
        }
        self.release_inflater(ctx);
        let msg = self.msg.take().expect("a data frame belongs to a message");
        if msg.text && !msg.compressed && ctx.validate_utf8 && self.held.is_none() {
            self.utf8.finish().map_err(|_| invalid_utf8())?;
        }
        if let Some(held) = self.held.take() {
            if !ctx.json_ok(&held.payload) {
                return Err(invalid_json());
            }
            spill.extend(&buf[..*w], now);
            *w = 0;
            spill.extend(&held.raw, now);
        }
        ev.messages += 1;
        Ok(())
    }

    /// A compressed text message of one small frame from a sender without
    /// context takeover (so dropping it leaves the receiver's window
    /// intact): it may be `app_ping`.
    fn maybe_compressed_app_ping(&self, h: &Header, ctx: &DirCtx<'_>) -> bool {
        ctx.app_ping.is_some()
            && h.opcode == opcode::TEXT
            && h.fin
            && h.rsv == 0b100
            && h.payload_len <= APP_PING_COMPRESSED_MAX
            && ctx.inspect.is_some_and(|i| !i.keep_window)
    }

    /// Inflates payload bytes of the current frame (`None`: the message's
    /// end), judging the output: the size limit (1009), UTF-8 (1007), and
    /// keeping it for a held JSON message. Stops at the first violation, so
    /// at most one output chunk past `max_message_bytes` is ever inflated.
    fn inflate(
        &mut self,
        bytes: Option<&[u8]>,
        ctx: &DirCtx<'_>,
        mut tap: Option<&mut Tap>,
    ) -> Result<(), Violation> {
        let (Some(inf), Some(msg)) = (self.inflater.as_mut(), self.msg) else {
            return Ok(());
        };
        let utf8 = &mut self.utf8;
        let held = &mut self.held;
        let check_utf8 = msg.text && ctx.validate_utf8 && held.is_none();
        let max = ctx.max_message_bytes;
        let mut sink = |out: &[u8], inflated: u64| -> Result<(), Violation> {
            if inflated > max {
                return Err(too_big());
            }
            if check_utf8 {
                utf8.feed(out).map_err(|_| invalid_utf8())?;
            }
            if let Some(h) = held.as_mut() {
                h.payload.extend_from_slice(out);
            }
            if let Some(t) = tap.as_mut()
                && !t.over
            {
                match t.buf.get_mut(t.len..t.len + out.len()) {
                    Some(dst) => {
                        dst.copy_from_slice(out);
                        t.len += out.len();
                    }
                    None => t.over = true,
                }
            }
            Ok(())
        };
        match bytes {
            Some(b) => inf.feed(b, self.frame_mask, self.frame_off.into(), &mut sink),
            None => {
                inf.finish(&mut sink)?;
                if check_utf8 {
                    self.utf8.finish().map_err(|_| invalid_utf8())?;
                }
                Ok(())
            }
        }
    }

    /// The message ended: its inflater goes back to the thread's pool,
    /// unless the sender keeps its context between messages.
    fn release_inflater(&mut self, ctx: &DirCtx<'_>) {
        if ctx.inspect.is_some_and(|i| i.keep_window) {
            return;
        }
        if let Some(i) = self.inflater.take() {
            Inflater::give(i);
        }
    }

    fn validate_payload(&mut self, masked: &[u8]) -> Result<(), InvalidUtf8> {
        match self.frame_mask {
            None => self.utf8.feed(masked),
            Some(m) => {
                // Unmask through a small stack buffer: the forwarded bytes
                // keep the client's mask.
                let mut tmp = [0u8; 512];
                let mut off = u64::from(self.frame_off);
                for chunk in masked.chunks(tmp.len()) {
                    let t = &mut tmp[..chunk.len()];
                    t.copy_from_slice(chunk);
                    frame::apply_mask(t, m, off);
                    self.utf8.feed(t)?;
                    off += chunk.len() as u64;
                }
                Ok(())
            }
        }
    }
}

impl DirCtx<'_> {
    fn json_ok(&self, payload: &[u8]) -> bool {
        serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok()
    }
}

impl From<Corrupt> for Violation {
    fn from(_: Corrupt) -> Violation {
        Violation {
            code: close_code::INVALID_PAYLOAD,
            reason: "invalid compressed data",
        }
    }
}

fn too_big() -> Violation {
    Violation {
        code: close_code::MESSAGE_TOO_BIG,
        reason: "message too big",
    }
}

fn invalid_utf8() -> Violation {
    Violation {
        code: close_code::INVALID_PAYLOAD,
        reason: "invalid UTF-8 in a text message",
    }
}

fn invalid_json() -> Violation {
    Violation {
        code: close_code::INVALID_PAYLOAD,
        reason: "text message is not valid JSON",
    }
}

fn rate_limited() -> Violation {
    Violation {
        code: close_code::RATE_LIMITED,
        reason: "rate limit exceeded",
    }
}
