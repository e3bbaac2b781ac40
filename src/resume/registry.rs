//! The live credentials of one gateway, shared by every shard: credential
//! -> the session's attach channel, or, for a while (a window, at least a
//! minute) after a session ended while its client was away, why it ended
//! (so the client learns `expired` or `overflow` rather than `unknown`).
//!
//! Single use: [`Registry::take`] removes the credential under the lock, so
//! of two requests with the same credential at most one gets the session.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::metrics::ResumeResult;
use crate::resume::session::Attach;
use crate::resume::wire::CREDENTIAL_HEX;

/// Who a session belongs to: the client ID and the auth identity of its
/// original upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub client_id: Box<str>,
    pub identity: Box<str>,
}

/// What the session tells a reconnect before the 101.
#[derive(Debug, Clone)]
pub struct Live {
    pub owner: Owner,
    pub attach: mpsc::UnboundedSender<Attach>,
    /// The subprotocol the backend chose at the start.
    pub protocol: Option<hyper::header::HeaderValue>,
}

enum Slot {
    Live(Live),
    Ended { why: ResumeResult, until: Instant },
}

/// The outcome of looking a credential up.
#[derive(Debug)]
pub enum Lookup {
    Live(Live),
    Lost(ResumeResult),
}

#[derive(Default)]
pub struct Registry {
    slots: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    map: HashMap<Box<str>, Slot>,
    /// Inserts since the last sweep of ended sessions.
    inserts: usize,
}

/// Ended sessions are forgotten in a sweep every this many inserts.
const SWEEP_EVERY: usize = 256;

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new credential (192 random bits) for `live`.
    pub fn issue(&self, live: Live) -> Box<str> {
        let cred = credential();
        let mut slots = self.lock();
        slots.inserts += 1;
        if slots.inserts >= SWEEP_EVERY {
            slots.inserts = 0;
            let now = Instant::now();
            slots
                .map
                .retain(|_, s| !matches!(s, Slot::Ended { until, .. } if *until <= now));
        }
        slots.map.insert(cred.clone(), Slot::Live(live));
        cred
    }

    /// What a credential names, for `owner`; nothing is spent.
    pub fn peek(&self, cred: &str, owner: &Owner) -> Lookup {
        match self.lock().map.get(cred) {
            Some(Slot::Live(l)) if &l.owner == owner => Lookup::Live(l.clone()),
            Some(Slot::Live(_)) => Lookup::Lost(ResumeResult::Refused),
            Some(Slot::Ended { why, until }) if *until > Instant::now() => Lookup::Lost(*why),
            _ => Lookup::Lost(ResumeResult::Unknown),
        }
    }

    /// Spends a credential: the session if it is still live and `owner`'s.
    pub fn take(&self, cred: &str, owner: &Owner) -> Option<Live> {
        let mut slots = self.lock();
        match slots.map.get(cred) {
            Some(Slot::Live(l)) if &l.owner == owner => {}
            _ => return None,
        }
        match slots.map.remove(cred) {
            Some(Slot::Live(l)) => Some(l),
            _ => None,
        }
    }

    /// The session behind `cred` ended: a later resume learns `why` for
    /// `remember`, then the credential is unknown.
    pub fn ended(&self, cred: &str, why: Option<ResumeResult>, remember: Duration) {
        let mut slots = self.lock();
        match why {
            Some(why) => {
                slots.map.insert(
                    cred.into(),
                    Slot::Ended {
                        why,
                        until: Instant::now() + remember,
                    },
                );
            }
            None => {
                slots.map.remove(cred);
            }
        }
    }

    /// Live sessions and remembered endings (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// 192 bits from the process's secure random source (the one rustls uses
/// for TLS), hex encoded: a valid subprotocol token.
fn credential() -> Box<str> {
    let mut bytes = [0u8; CREDENTIAL_HEX / 2];
    let rng = rustls::crypto::ring::default_provider().secure_random;
    if rng.fill(&mut bytes).is_err() {
        // The OS random source failed: no guessable fallback. A session
        // without a usable credential simply cannot be resumed.
        return "unavailable".into();
    }
    let mut s = String::with_capacity(CREDENTIAL_HEX);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s.into_boxed_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(id: &str) -> Owner {
        Owner {
            client_id: id.into(),
            identity: "".into(),
        }
    }

    #[tokio::test]
    async fn credentials_are_single_use_and_bound_to_their_owner() {
        let r = Registry::default();
        let (tx, _rx) = mpsc::unbounded_channel();
        let cred = r.issue(Live {
            owner: owner("alice"),
            attach: tx,
            protocol: None,
        });
        assert_eq!(cred.len(), CREDENTIAL_HEX);
        assert!(matches!(
            r.peek(&cred, &owner("mallory")),
            Lookup::Lost(ResumeResult::Refused)
        ));
        assert!(r.take(&cred, &owner("mallory")).is_none());
        assert!(matches!(r.peek(&cred, &owner("alice")), Lookup::Live(_)));
        assert!(r.take(&cred, &owner("alice")).is_some());
        assert!(r.take(&cred, &owner("alice")).is_none());
        assert!(matches!(
            r.peek(&cred, &owner("alice")),
            Lookup::Lost(ResumeResult::Unknown)
        ));
        r.ended(&cred, Some(ResumeResult::Expired), Duration::from_secs(60));
        assert!(matches!(
            r.peek(&cred, &owner("alice")),
            Lookup::Lost(ResumeResult::Expired)
        ));
        assert_ne!(credential(), credential());
    }
}
