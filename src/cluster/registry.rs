//! The live connections of this gateway that the cluster can reach, by
//! connection, by client ID and by topic. In memory only: connections
//! register and leave here (a short std mutex, never held across an
//! `.await`), and the cluster task mirrors the changes into Redis from the
//! [`Event`]s it is sent, so no Redis call ever sits on a connection's path.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use crate::relay::push::{Link, Mailbox, Push};

/// Topics one connection may be subscribed to; more are ignored.
pub const MAX_TOPICS_PER_CONNECTION: usize = 64;
/// The longest topic name accepted (from a header or the admin API).
pub const MAX_TOPIC_LEN: usize = 256;

/// A change the cluster task mirrors into Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Added {
        conn: u64,
        client_id: Arc<str>,
        since_ms: u64,
    },
    Removed {
        conn: u64,
        client_id: Arc<str>,
    },
}

struct Conn {
    client_id: Arc<str>,
    backend: Arc<str>,
    since_ms: u64,
    tx: Arc<Mailbox>,
    topics: Vec<Arc<str>>,
}

#[derive(Default)]
struct Inner {
    conns: HashMap<u64, Conn>,
    by_client: HashMap<Arc<str>, Vec<u64>>,
    by_topic: HashMap<Arc<str>, HashSet<u64>>,
}

/// What a client ID has on this gateway (its presence entry).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Presence {
    /// The backend of its newest connection.
    pub backend: String,
    /// Unix milliseconds when its oldest connection here started.
    pub since_ms: u64,
    pub connections: usize,
}

/// How many connections a delivery reached, and how many it skipped
/// because their queue was full.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub delivered: u64,
    pub dropped: u64,
}

pub struct Registry {
    inner: Mutex<Inner>,
    events: mpsc::UnboundedSender<Event>,
    next: AtomicU64,
}

/// A connection's place in the registry; leaves it when dropped.
pub struct Registration {
    registry: Arc<Registry>,
    conn: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.remove(self.conn);
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Topic names from a `Wsgate-Topics` header or a JSON list: trimmed,
/// non-empty, visible ASCII, at most [`MAX_TOPIC_LEN`] bytes; others are
/// skipped. At most [`MAX_TOPICS_PER_CONNECTION`].
pub fn parse_topics<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<Arc<str>> {
    let mut out: Vec<Arc<str>> = Vec::new();
    for t in names.into_iter().map(str::trim) {
        if valid_topic(t) && !out.iter().any(|o| &**o == t) {
            out.push(t.into());
        }
        if out.len() == MAX_TOPICS_PER_CONNECTION {
            break;
        }
    }
    out
}

pub fn valid_topic(t: &str) -> bool {
    !t.is_empty() && t.len() <= MAX_TOPIC_LEN && t.bytes().all(|b| b.is_ascii_graphic())
}

impl Registry {
    pub fn new() -> (Arc<Registry>, mpsc::UnboundedReceiver<Event>) {
        let (events, rx) = mpsc::unbounded_channel();
        let r = Registry {
            inner: Mutex::default(),
            events,
            next: AtomicU64::new(1),
        };
        (Arc::new(r), rx)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers one upgraded connection; the [`Link`] goes to its relay.
    pub fn register(
        self: &Arc<Self>,
        client_id: &str,
        backend: &str,
        topics: Vec<Arc<str>>,
    ) -> Link {
        let tx = Mailbox::new();
        let rx = tx.clone();
        let conn = self.next.fetch_add(1, Ordering::Relaxed);
        let since_ms = now_ms();
        let client_id: Arc<str> = client_id.into();
        {
            let mut g = self.lock();
            for t in &topics {
                g.by_topic.entry(t.clone()).or_default().insert(conn);
            }
            g.by_client.entry(client_id.clone()).or_default().push(conn);
            g.conns.insert(
                conn,
                Conn {
                    client_id: client_id.clone(),
                    backend: backend.into(),
                    since_ms,
                    tx,
                    topics,
                },
            );
        }
        // The receiver lives as long as the cluster task; if it is gone
        // there is nothing to mirror to.
        let _ = self.events.send(Event::Added {
            conn,
            client_id,
            since_ms,
        });
        let registration = Registration {
            registry: self.clone(),
            conn,
        };
        Link::new(rx, Box::new(registration))
    }

    fn remove(&self, conn: u64) {
        let client_id = {
            let mut g = self.lock();
            let Some(c) = g.conns.remove(&conn) else {
                return;
            };
            for t in &c.topics {
                if let Some(set) = g.by_topic.get_mut(t) {
                    set.remove(&conn);
                    if set.is_empty() {
                        g.by_topic.remove(t);
                    }
                }
            }
            if let Some(list) = g.by_client.get_mut(&c.client_id) {
                list.retain(|&x| x != conn);
                if list.is_empty() {
                    g.by_client.remove(&c.client_id);
                }
            }
            c.client_id
        };
        let _ = self.events.send(Event::Removed { conn, client_id });
    }

    /// This gateway's presence entry for a client ID (None: not here).
    pub fn presence(&self, client_id: &str) -> Option<Presence> {
        let g = self.lock();
        let conns = g.by_client.get(client_id)?;
        let mut p = Presence {
            backend: String::new(),
            since_ms: u64::MAX,
            connections: conns.len(),
        };
        let mut newest = 0;
        for c in conns.iter().filter_map(|id| g.conns.get(id)) {
            p.since_ms = p.since_ms.min(c.since_ms);
            if c.since_ms >= newest {
                newest = c.since_ms;
                p.backend = c.backend.to_string();
            }
        }
        Some(p)
    }

    /// Every client ID here with its presence (for a full re-publish).
    pub fn all_presence(&self) -> Vec<(Arc<str>, Presence)> {
        let ids: Vec<Arc<str>> = self.lock().by_client.keys().cloned().collect();
        ids.into_iter()
            .filter_map(|id| self.presence(&id).map(|p| (id, p)))
            .collect()
    }

    /// Every connection here: (conn, client ID, since), for the cap's
    /// re-publish.
    pub fn all_connections(&self) -> Vec<(u64, Arc<str>, u64)> {
        self.lock()
            .conns
            .iter()
            .map(|(&id, c)| (id, c.client_id.clone(), c.since_ms))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.lock().conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn offer(tx: &Mailbox, push: Push, d: &mut Delivered) {
        match tx.try_push(push) {
            Ok(()) => d.delivered += 1,
            // A client that does not keep up loses pushes.
            Err(_) => d.dropped += 1,
        }
    }

    /// Sends to every connection of a client ID here.
    pub fn to_client(&self, client_id: &str, push: &Push) -> Delivered {
        let boxes: Vec<Arc<Mailbox>> = {
            let g = self.lock();
            g.by_client
                .get(client_id)
                .into_iter()
                .flatten()
                .filter_map(|id| g.conns.get(id).map(|c| c.tx.clone()))
                .collect()
        };
        Self::offer_all(&boxes, push)
    }

    /// Sends to one connection here (the per-client cap closes one).
    pub fn to_conn(&self, conn: u64, push: Push) -> Delivered {
        let tx = self.lock().conns.get(&conn).map(|c| c.tx.clone());
        let mut d = Delivered::default();
        if let Some(tx) = tx {
            Self::offer(&tx, push, &mut d);
        }
        d
    }

    /// Sends to every connection here subscribed to `topic`.
    pub fn to_topic(&self, topic: &str, push: &Push) -> Delivered {
        let boxes: Vec<Arc<Mailbox>> = {
            let g = self.lock();
            g.by_topic
                .get(topic)
                .into_iter()
                .flatten()
                .filter_map(|id| g.conns.get(id).map(|c| c.tx.clone()))
                .collect()
        };
        Self::offer_all(&boxes, push)
    }

    /// The pushes (and their wake-ups) happen outside the registry's lock:
    /// under it only the mailboxes are collected, so connections that
    /// register or leave during a big fan-out wait for that much only.
    fn offer_all(boxes: &[Arc<Mailbox>], push: &Push) -> Delivered {
        let mut d = Delivered::default();
        for tx in boxes {
            Self::offer(tx, push.clone(), &mut d);
        }
        d
    }

    /// Subscribes and unsubscribes every connection of a client ID here.
    /// Returns how many connections it changed.
    pub fn set_topics(&self, client_id: &str, add: &[Arc<str>], remove: &[Arc<str>]) -> usize {
        let mut g = self.lock();
        let Inner {
            conns,
            by_client,
            by_topic,
        } = &mut *g;
        let ids = by_client.get(client_id).cloned().unwrap_or_default();
        for id in &ids {
            let Some(c) = conns.get_mut(id) else { continue };
            for t in remove {
                if let Some(pos) = c.topics.iter().position(|x| x == t) {
                    c.topics.swap_remove(pos);
                    if let Some(set) = by_topic.get_mut(t) {
                        set.remove(id);
                        if set.is_empty() {
                            by_topic.remove(t);
                        }
                    }
                }
            }
            for t in add {
                if c.topics.len() < MAX_TOPICS_PER_CONNECTION && !c.topics.contains(t) {
                    c.topics.push(t.clone());
                    by_topic.entry(t.clone()).or_default().insert(*id);
                }
            }
        }
        ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_deliver_and_leave() {
        let (r, mut events) = Registry::new();
        let a = r.register(
            "alice",
            "b1",
            parse_topics(["room:1", " room:2 ", "", "room:1"]),
        );
        let b = r.register("alice", "b2", vec![]);
        assert!(matches!(events.try_recv(), Ok(Event::Added { .. })));
        let p = r.presence("alice").unwrap();
        assert_eq!((p.connections, p.backend.as_str()), (2, "b2"));
        let f = Push::Frame(crate::relay::push::data_frame(true, b"hi"));
        assert_eq!(r.to_client("alice", &f).delivered, 2);
        assert_eq!(r.to_topic("room:2", &f).delivered, 1);
        assert_eq!(r.to_topic("room:3", &f).delivered, 0);
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        // One to the client ID, one to room:2.
        for _ in 0..2 {
            assert!(matches!(
                a.rx.poll_pop(&mut cx),
                std::task::Poll::Ready(Push::Frame(_))
            ));
        }
        assert!(a.rx.poll_pop(&mut cx).is_pending());
        assert_eq!(
            r.set_topics("alice", &["room:3".into()], &["room:2".into()]),
            2
        );
        assert_eq!(r.to_topic("room:3", &f).delivered, 2);
        assert_eq!(r.to_topic("room:2", &f).delivered, 0);
        drop(b);
        assert_eq!(r.presence("alice").unwrap().connections, 1);
        drop(a);
        assert!(r.presence("alice").is_none());
        assert!(r.is_empty());
        assert_eq!(r.to_topic("room:1", &f).delivered, 0);
    }

    #[test]
    fn a_full_queue_drops_instead_of_growing() {
        let (r, _events) = Registry::new();
        let _link = r.register("bob", "b1", vec![]);
        let f = Push::Frame(crate::relay::push::data_frame(false, b"x"));
        let mut total = Delivered::default();
        for _ in 0..crate::relay::push::QUEUE + 5 {
            let d = r.to_client("bob", &f);
            total.delivered += d.delivered;
            total.dropped += d.dropped;
        }
        assert_eq!(total.delivered, crate::relay::push::QUEUE as u64);
        assert_eq!(total.dropped, 5);
    }
}
