//! The relay's per-direction frame parser (`relay::inbound`) over arbitrary
//! byte streams cut at input-chosen points, as the relay feeds it: no panic,
//! forwarded bytes never exceed what came in, and without JSON holding or
//! app_ping they are a prefix of the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::relay::inbound::{DirCtx, Events, Inbound};
use wsgate::relay::inflate::Inspect;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let flags = data[0];
    let cut_seed = data[1];
    let max = if data[2] == 0 {
        u64::MAX
    } else {
        u64::from(data[2]) * 16
    };
    let stream = &data[3..];
    let ctx = DirCtx {
        from_client: flags & 1 != 0,
        max_message_bytes: max,
        validate_utf8: flags & 2 != 0,
        validate_json: flags & 4 != 0,
        deflate: flags & 8 != 0,
        // Compressed messages inflated (with or without a kept window).
        inspect: (flags & 8 != 0 && flags & 64 == 0).then_some(Inspect {
            keep_window: flags & 32 != 0,
        }),
        app_ping: (flags & 16 != 0).then_some(&b"{\"type\":\"ping\"}"[..]),
    };
    let mut inb = Inbound::default();
    let mut ev = Events::default();
    let mut spill = Vec::new();
    let mut out = Vec::new();
    let now = tokio::time::Instant::now();
    let step = usize::from(cut_seed % 23) + 1;
    let mut at = 0;
    while at < stream.len() {
        let end = (at + step).min(stream.len());
        let mut buf = std::mem::take(&mut inb.carry);
        buf.extend_from_slice(&stream[at..end]);
        at = end;
        let (w, v) = inb.process(&mut buf, &ctx, &mut None, now, &mut ev, &mut spill);
        assert!(w <= buf.len());
        out.extend_from_slice(&buf[..w]);
        if v.is_some() {
            break;
        }
    }
    out.extend_from_slice(&spill);
    assert!(out.len() <= stream.len());
    if !ctx.validate_json && ctx.app_ping.is_none() && !ev.heartbeat_pong {
        assert!(stream.starts_with(&out));
    }
});
