//! Who a frame, a failure or a close belongs to: the two peers of a
//! proxied connection, and the three parties that can end one. Shared by the
//! relay (which peer), the close accounting and the metric labels, so it
//! sits below all of them.

/// One of the two peers the gateway relays between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client = 0,
    Backend = 1,
}

impl Side {
    pub const BOTH: [Side; 2] = [Side::Client, Side::Backend];

    /// The other peer.
    pub fn partner(self) -> Side {
        match self {
            Side::Client => Side::Backend,
            Side::Backend => Side::Client,
        }
    }

    /// The `peer` metric label.
    pub fn label(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Backend => "backend",
        }
    }
}

/// Who ended a connection: a peer (its close frame, or its vanishing) or the
/// gateway itself (a limit, a timeout, a drain, a shutdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initiator {
    Client,
    Backend,
    Gateway,
}

impl Initiator {
    /// The `initiator` metric label.
    pub fn label(self) -> &'static str {
        match self {
            Initiator::Client => "client",
            Initiator::Backend => "backend",
            Initiator::Gateway => "gateway",
        }
    }
}

impl From<Side> for Initiator {
    fn from(s: Side) -> Initiator {
        match s {
            Side::Client => Initiator::Client,
            Side::Backend => Initiator::Backend,
        }
    }
}
