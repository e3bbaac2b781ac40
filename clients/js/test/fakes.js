// Test doubles for the unit tests: a virtual clock and a scriptable WebSocket.

/** A clock whose time only moves when the test says so. */
export function fakeClock(randoms = []) {
  let now = 0;
  let nextId = 0;
  const timers = new Map();
  return {
    delays: [], // every setTimeout delay asked for, for assertions
    now: () => now,
    random: () => (randoms.length ? randoms.shift() : 0.5),
    setTimeout(fn, ms) {
      this.delays.push(ms);
      timers.set(++nextId, { at: now + ms, fn });
      return nextId;
    },
    clearTimeout(id) {
      timers.delete(id);
    },
    /** Run every timer due within `ms`, in time order, letting promises settle in between. */
    async advance(ms) {
      const end = now + ms;
      for (;;) {
        await flush();
        let due = null;
        for (const [id, t] of timers) if (t.at <= end && (!due || t.at < due[1].at)) due = [id, t];
        if (!due) break;
        timers.delete(due[0]);
        now = due[1].at;
        due[1].fn();
      }
      now = end;
      await flush();
    },
    pending: () => timers.size,
  };
}

export const flush = () => new Promise((r) => setImmediate(r));

/** A WebSocket whose server side the test drives. */
export class FakeWebSocket {
  static all = [];
  static get last() {
    return FakeWebSocket.all[FakeWebSocket.all.length - 1];
  }
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0;
    this.bufferedAmount = 0;
    this.sent = [];
    this.closedWith = null;
    FakeWebSocket.all.push(this);
  }
  send(data) {
    if (this.readyState !== 1) throw new Error('InvalidStateError');
    this.sent.push(data);
  }
  close(code, reason) {
    this.closedWith = { code, reason };
    this.readyState = 2;
  }
  // server side
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }
  receive(data) {
    this.onmessage?.({ data });
  }
  serverClose(code, reason = '') {
    this.readyState = 3;
    this.onclose?.({ code, reason, wasClean: code !== 1006 });
  }
}
