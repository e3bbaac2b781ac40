//! The consistent-hash ring and backend selection. Pure: no I/O, no clock,
//! no shared state; the caller says which backends are up and how loaded.
//!
//! Why our own ring rather than the `consistent_hash` crate: we need weights
//! (vnodes x weight), a walk that skips down backends, bounded loads
//! (Mirrokni, Thorup, Zadimoghaddam, SODA 2018) and an ordered candidate
//! list for `connect_retries`. The crate offers the first at best, is
//! unmaintained since 2017, and its lookup is the same binary search over a
//! sorted vector that this file does in 80 lines. A hash that is stable
//! across builds and machines matters too: every gateway replica must map a
//! client ID to the same backend, so std's `DefaultHasher` (unspecified
//! across Rust releases) is out.

/// A ring of `vnodes x weight` points per backend, sorted by hash.
#[derive(Debug, Clone)]
pub struct Ring {
    points: Vec<(u64, u32)>,
    backends: usize,
}

/// FNV-1a, then the murmur3 finalizer to spread FNV's weak low bits.
/// Stable across builds, platforms and Rust versions.
pub fn hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in key {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51afd7ed558ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ceb9fe1a85ec53);
    h ^ (h >> 33)
}

impl Ring {
    /// Builds a ring from `(name, weight)` pairs; index i in the input is the
    /// backend index the ring returns. Points hash the *name*, so a backend
    /// keeps its keys across reloads and replicas.
    pub fn new<'a>(backends: impl IntoIterator<Item = (&'a str, u32)>, vnodes: u32) -> Ring {
        let mut points = Vec::new();
        let mut n = 0;
        for (i, (name, weight)) in backends.into_iter().enumerate() {
            n += 1;
            for v in 0..vnodes * weight.max(1) {
                let key = format!("{name}#{v}");
                points.push((hash(key.as_bytes()), i as u32));
            }
        }
        points.sort_unstable();
        Ring {
            points,
            backends: n,
        }
    }

    /// Distinct backend indices in ring order, starting at the key's point.
    pub fn walk(&self, key: &str) -> impl Iterator<Item = usize> + '_ {
        let h = hash(key.as_bytes());
        let start = self.points.partition_point(|&(p, _)| p < h);
        let mut seen = vec![false; self.backends];
        let len = self.points.len();
        (0..len).filter_map(move |i| {
            let b = self.points[(start + i) % len].1 as usize;
            if seen[b] {
                None
            } else {
                seen[b] = true;
                Some(b)
            }
        })
    }

    /// Backends to try for `key`, best first, at most `max` of them: the
    /// first up backend clockwise from the key, skipping, with bounded loads
    /// (`load_factor` > 1), any at or over
    /// `ceil(load_factor x (total active + 1) / up backends)`.
    pub fn pick(
        &self,
        key: &str,
        max: usize,
        is_up: impl Fn(usize) -> bool,
        load: impl Fn(usize) -> usize,
        load_factor: f64,
    ) -> Vec<usize> {
        let up: Vec<usize> = (0..self.backends).filter(|&b| is_up(b)).collect();
        if up.is_empty() || max == 0 {
            return Vec::new();
        }
        let bound = (load_factor > 1.0).then(|| {
            let total: usize = up.iter().map(|&b| load(b)).sum();
            ((load_factor * (total + 1) as f64) / up.len() as f64).ceil() as usize
        });
        // Never more than every backend once, whatever `max` asks for.
        let mut out = Vec::with_capacity(max.min(self.backends));
        let mut overloaded = Vec::new();
        for b in self.walk(key) {
            if !is_up(b) {
                continue;
            }
            if bound.is_some_and(|bound| load(b) >= bound) {
                overloaded.push(b);
                continue;
            }
            out.push(b);
            if out.len() == max {
                return out;
            }
        }
        // Every backend at its bound cannot happen with load_factor > 1, but
        // retries may still want them as a last resort.
        out.extend(overloaded.into_iter().take(max - out.len()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn ring(names: &[&str]) -> Ring {
        Ring::new(names.iter().map(|n| (*n, 1)), 160)
    }

    fn owner(r: &Ring, names: &[&str], key: &str) -> String {
        names[r.pick(key, 1, |_| true, |_| 0, 0.0)[0]].to_string()
    }

    #[test]
    fn a_huge_max_lists_each_backend_once_and_allocates_for_no_more() {
        let names = ["b1", "b2", "b3"];
        let r = ring(&names);
        let order = r.pick("k", usize::MAX, |_| true, |_| 0, 0.0);
        assert_eq!(order.len(), 3);
        assert!(order.capacity() <= 3, "capacity {}", order.capacity());
    }

    #[test]
    fn same_id_same_backend() {
        let names = ["b1", "b2", "b3"];
        let a = ring(&names);
        let b = ring(&names);
        for i in 0..1000 {
            let k = format!("client-{i}");
            assert_eq!(owner(&a, &names, &k), owner(&b, &names, &k));
        }
    }

    #[test]
    fn three_backends_share_evenly() {
        let names = ["b1", "b2", "b3"];
        let r = ring(&names);
        let mut counts = HashMap::new();
        for i in 0..10_000 {
            *counts
                .entry(owner(&r, &names, &format!("user-{i}")))
                .or_insert(0) += 1;
        }
        for n in names {
            let c = counts[n] as f64;
            assert!(
                (c - 10_000.0 / 3.0).abs() <= 0.15 * 10_000.0 / 3.0,
                "{n}: {c} of 10000"
            );
        }
    }

    #[test]
    fn removing_one_moves_only_its_ids() {
        let names = ["b1", "b2", "b3", "b4"];
        let r = ring(&names);
        let rest = ["b1", "b2", "b4"];
        let r2 = ring(&rest);
        for i in 0..10_000 {
            let k = format!("k{i}");
            let before = owner(&r, &names, &k);
            let after = owner(&r2, &rest, &k);
            if before != "b3" {
                assert_eq!(before, after, "{k} moved though its backend stayed");
            }
        }
        // Marking b3 down (instead of removing it) behaves the same.
        for i in 0..10_000 {
            let k = format!("k{i}");
            let before = owner(&r, &names, &k);
            let down = names[r.pick(&k, 1, |b| b != 2, |_| 0, 0.0)[0]];
            if before != "b3" {
                assert_eq!(before, down);
            }
        }
    }

    #[test]
    fn adding_one_moves_about_its_share() {
        let names = ["b1", "b2", "b3"];
        let more = ["b1", "b2", "b3", "b4"];
        let (r, r2) = (ring(&names), ring(&more));
        let mut moved = 0;
        for i in 0..10_000 {
            let k = format!("k{i}");
            let (a, b) = (owner(&r, &names, &k), owner(&r2, &more, &k));
            if a != b {
                assert_eq!(b, "b4", "a key moved between old backends");
                moved += 1;
            }
        }
        let share = moved as f64 / 10_000.0;
        assert!(
            (share - 0.25).abs() < 0.05,
            "moved {share}, expected about 1/4"
        );
    }

    #[test]
    fn weights_scale_share() {
        let r = Ring::new([("big", 3), ("small", 1)], 160);
        let big = (0..10_000)
            .filter(|i| r.pick(&format!("k{i}"), 1, |_| true, |_| 0, 0.0)[0] == 0)
            .count();
        assert!((6_800..=8_200).contains(&big), "weight 3 of 4 got {big}");
    }

    #[test]
    fn bounded_loads_cap_every_backend() {
        let names = ["b1", "b2", "b3"];
        let r = ring(&names);
        let mut load = [0usize; 3];
        let c = 1.25;
        for i in 0..3000 {
            let b = r.pick(&format!("hot-{}", i % 7), 1, |_| true, |b| load[b], c)[0];
            load[b] += 1;
            let total: usize = load.iter().sum();
            let bound = (c * total as f64 / 3.0).ceil() as usize;
            assert!(load.iter().all(|&l| l <= bound), "{load:?} over {bound}");
        }
    }

    #[test]
    fn retries_walk_distinct_backends() {
        let r = ring(&["b1", "b2", "b3"]);
        let order = r.pick("x", 3, |_| true, |_| 0, 0.0);
        assert_eq!(order.len(), 3);
        let mut s = order.clone();
        s.sort();
        s.dedup();
        assert_eq!(s.len(), 3);
        assert!(r.pick("x", 2, |_| false, |_| 0, 0.0).is_empty());
    }

    /// Fixed vectors: every gateway version and replica must map these IDs
    /// to these backends (the README promises replicas agree without
    /// talking). Computed independently of this code (a Python port of the
    /// hash and the ring walk); a change here moves users between backends.
    #[test]
    fn hash_vectors_are_stable() {
        assert_eq!(hash(b""), 0xefd01f60ba992926);
        assert_eq!(hash(b"alice"), 0x3507d047a67c08f4);
        assert_eq!(hash(b"client-42"), 0xc45611be9bd9112b);
        assert_eq!(hash(b"b1#0"), 0xeb08917d750c2ba6);
    }

    #[test]
    fn pick_vectors_are_stable() {
        let names = ["b1", "b2", "b3"];
        let r = Ring::new([("b1", 1), ("b2", 1), ("b3", 2)], 160);
        let vectors: &[(&str, [&str; 3])] = &[
            ("alice", ["b1", "b2", "b3"]),
            ("bob", ["b1", "b3", "b2"]),
            ("carol", ["b3", "b2", "b1"]),
            ("dave", ["b3", "b1", "b2"]),
            ("erin", ["b1", "b3", "b2"]),
            ("frank", ["b3", "b1", "b2"]),
            ("grace", ["b1", "b3", "b2"]),
            ("heidi", ["b3", "b2", "b1"]),
            ("ivan", ["b2", "b1", "b3"]),
            ("judy", ["b1", "b3", "b2"]),
            ("client-1", ["b2", "b3", "b1"]),
            ("client-2", ["b3", "b2", "b1"]),
            ("client-3", ["b1", "b3", "b2"]),
            ("10.0.0.7", ["b2", "b3", "b1"]),
            ("user:42", ["b3", "b1", "b2"]),
        ];
        for (id, order) in vectors {
            let got: Vec<&str> = r
                .pick(id, 3, |_| true, |_| 0, 0.0)
                .into_iter()
                .map(|i| names[i])
                .collect();
            assert_eq!(got, order, "{id}");
            // With b3 down, the same walk skips it.
            let without: Vec<&str> = order.iter().copied().filter(|n| *n != "b3").collect();
            let got: Vec<&str> = r
                .pick(id, 3, |i| i != 2, |_| 0, 0.0)
                .into_iter()
                .map(|i| names[i])
                .collect();
            assert_eq!(got, without, "{id} with b3 down");
        }
    }
}
