//! Balancing strategies, one closed enum dispatched by one `match` (STYLE rule 3).
//!
//! Every strategy picks among the servers for which `available(i)` holds (healthy,
//! breaker not open, not excluded by a retry), so an unhealthy server is skipped
//! without rebuilding anything, and its share is spread over the available ones
//! evenly rather than handed to its neighbour in the list.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use smallvec::SmallVec;

use crate::config::Balance;

use super::server::ServerState;
use std::sync::Arc;

/// Virtual nodes per unit of weight on the consistent-hash ring.
const RING_POINTS_PER_WEIGHT: u64 = 160;
/// The most points a ring gets (2.5 MiB of them); past it every server's share is
/// scaled down alike (each keeps at least one point). Config bounds weights, so only
/// a set of many heavy servers comes near it.
const MAX_RING_POINTS: u64 = 160_000;

/// What a pick may depend on.
pub struct PickKey {
    pub client_ip: IpAddr,
    /// Hash of the `hash_key` value for `consistent_hash`.
    pub hash: u64,
}

/// A strategy and its state.
#[derive(Debug)]
pub enum Balancer {
    RoundRobin { next: AtomicUsize },
    Weighted { current: Mutex<Vec<i64>> },
    LeastConn { next: AtomicUsize },
    IpHash,
    ConsistentHash { ring: Vec<(u64, usize)> },
    P2c,
}

impl Balancer {
    /// The balancer for `servers` with `strategy`.
    pub fn new(strategy: Balance, servers: &[Arc<ServerState>]) -> Self {
        match strategy {
            Balance::RoundRobin => Balancer::RoundRobin {
                next: AtomicUsize::new(0),
            },
            Balance::Weighted => Balancer::Weighted {
                current: Mutex::new(vec![0; servers.len()]),
            },
            Balance::LeastConn => Balancer::LeastConn {
                next: AtomicUsize::new(0),
            },
            Balance::IpHash => Balancer::IpHash,
            Balance::ConsistentHash => Balancer::ConsistentHash {
                ring: build_ring(servers),
            },
            Balance::P2c => Balancer::P2c,
        }
    }

    /// Picks a server index, or `None` when no server is available.
    pub fn pick(
        &self,
        servers: &[Arc<ServerState>],
        key: &PickKey,
        available: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        self.choose(servers, key, available, true)
    }

    /// The server `pick` would pick now, leaving the rotation where it is (for
    /// `std.load_balance`, which only looks).
    pub fn peek(
        &self,
        servers: &[Arc<ServerState>],
        key: &PickKey,
        available: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        self.choose(servers, key, available, false)
    }

    /// `advance`: move the rotation on (a pick), or only read it (a peek).
    fn choose(
        &self,
        servers: &[Arc<ServerState>],
        key: &PickKey,
        available: impl Fn(usize) -> bool,
        advance: bool,
    ) -> Option<usize> {
        let n = servers.len();
        if n == 0 {
            return None;
        }
        let turn = |next: &AtomicUsize| {
            if advance {
                next.fetch_add(1, Ordering::Relaxed)
            } else {
                next.load(Ordering::Relaxed)
            }
        };
        match self {
            Balancer::RoundRobin { next } => {
                let t = turn(next);
                if available(t % n) {
                    return Some(t % n);
                }
                // A turn of a server out of rotation goes to the available ones in
                // turn (the m-th time this slot comes round, the m-th of them), so its
                // share spreads evenly instead of falling to its neighbour.
                let up = available_ones(n, &available);
                up.get((t / n) % up.len().max(1)).copied()
            }
            Balancer::Weighted { current } if advance => {
                smooth_weighted(servers, &mut current.lock(), &available)
            }
            Balancer::Weighted { current } => {
                let mut copy = current.lock().clone();
                smooth_weighted(servers, &mut copy, &available)
            }
            Balancer::LeastConn { next } => {
                // Ties go round the available servers only, so a server out of
                // rotation does not hand its ties to its neighbour.
                let up = available_ones(n, &available);
                let (start, k) = (turn(next), up.len());
                (0..k)
                    .map(|j| up[(start + j) % k])
                    .min_by_key(|&i| servers[i].inflight())
            }
            Balancer::IpHash => {
                let hash = hash_ip(key.client_ip);
                let home = (hash % n as u64) as usize;
                if available(home) {
                    return Some(home);
                }
                // Its server is out: the client goes to an available one by another
                // hash of its address, the same while the available ones stay the same.
                let up = available_ones(n, &available);
                let again = hash_bytes(&hash.to_le_bytes());
                up.get((again % up.len().max(1) as u64) as usize).copied()
            }
            Balancer::ConsistentHash { ring } => ring_lookup(ring, key.hash, &available),
            Balancer::P2c => power_of_two(servers, &available),
        }
    }
}

/// The indexes of the available servers, in order.
fn available_ones(n: usize, available: &impl Fn(usize) -> bool) -> SmallVec<[usize; 16]> {
    (0..n).filter(|&i| available(i)).collect()
}

/// nginx's smooth weighted round robin: deterministic, and spreads a heavy server's
/// turns instead of sending them in a burst.
fn smooth_weighted(
    servers: &[Arc<ServerState>],
    current: &mut [i64],
    available: &impl Fn(usize) -> bool,
) -> Option<usize> {
    let mut total = 0i64;
    let mut best: Option<usize> = None;
    for (i, server) in servers.iter().enumerate() {
        if !available(i) {
            continue;
        }
        let w = i64::from(server.weight);
        current[i] += w;
        total += w;
        if best.is_none_or(|b| current[i] > current[b]) {
            best = Some(i);
        }
    }
    let chosen = best?;
    current[chosen] -= total;
    Some(chosen)
}

fn power_of_two(servers: &[Arc<ServerState>], available: &impl Fn(usize) -> bool) -> Option<usize> {
    let n = servers.len();
    let a = fastrand::usize(..n);
    let b = if n > 1 {
        (a + 1 + fastrand::usize(..n - 1)) % n
    } else {
        a
    };
    match (available(a), available(b)) {
        (true, true) => Some(if servers[b].inflight() < servers[a].inflight() {
            b
        } else {
            a
        }),
        (true, false) => Some(a),
        (false, true) => Some(b),
        (false, false) => (0..n).find(|&i| available(i)),
    }
}

fn build_ring(servers: &[Arc<ServerState>]) -> Vec<(u64, usize)> {
    let wanted = |s: &ServerState| u64::from(s.weight.max(1)) * RING_POINTS_PER_WEIGHT;
    let total: u64 = servers.iter().map(|s| wanted(s)).sum();
    let points_of = |s: &ServerState| {
        if total <= MAX_RING_POINTS {
            wanted(s)
        } else {
            // u128: `wanted` is below 2^39 and the cap below 2^18, but stay exact.
            let scaled = u128::from(wanted(s)) * u128::from(MAX_RING_POINTS) / u128::from(total);
            u64::try_from(scaled).unwrap_or(MAX_RING_POINTS).max(1)
        }
    };
    let mut ring = Vec::new();
    for (i, server) in servers.iter().enumerate() {
        for p in 0..points_of(server) {
            let label = format!("{}#{}", server.label(), p);
            ring.push((hash_bytes(label.as_bytes()), i));
        }
    }
    ring.sort_unstable();
    ring
}

fn ring_lookup(
    ring: &[(u64, usize)],
    hash: u64,
    available: &impl Fn(usize) -> bool,
) -> Option<usize> {
    if ring.is_empty() {
        return None;
    }
    let start = ring.partition_point(|(h, _)| *h < hash);
    (0..ring.len())
        .map(|k| ring[(start + k) % ring.len()].1)
        .find(|&i| available(i))
}

/// FNV-1a with a final avalanche: stable across processes and releases, so hashing
/// picks the same server after a restart.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

fn hash_ip(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => hash_bytes(&v4.octets()),
        IpAddr::V6(v6) => hash_bytes(&v6.octets()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BreakerConfig, ServerTarget};
    use std::time::Duration;

    fn servers(weights: &[u32]) -> Vec<Arc<ServerState>> {
        let b = BreakerConfig {
            failures: 5,
            open_for: Duration::from_secs(1),
            statuses: Vec::new(),
        };
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16));
                let target = ServerTarget::Addr {
                    addr,
                    authority: addr.to_string(),
                };
                Arc::new(ServerState::new(target, *w, &b))
            })
            .collect()
    }

    fn key(ip: [u8; 4], hash: u64) -> PickKey {
        PickKey {
            client_ip: IpAddr::from(ip),
            hash,
        }
    }

    fn counts(b: &Balancer, s: &[Arc<ServerState>], n: usize) -> Vec<usize> {
        let mut c = vec![0; s.len()];
        for _ in 0..n {
            if let Some(i) = b.pick(s, &key([1, 2, 3, 4], 0), |_| true) {
                c[i] += 1;
            }
        }
        c
    }

    #[test]
    fn round_robin_alternates_and_skips_unavailable() {
        let s = servers(&[1, 1]);
        let b = Balancer::new(Balance::RoundRobin, &s);
        assert_eq!(counts(&b, &s, 10), vec![5, 5]);
        assert_eq!(b.pick(&s, &key([1, 1, 1, 1], 0), |i| i == 1), Some(1));
        assert_eq!(b.pick(&s, &key([1, 1, 1, 1], 0), |_| false), None);
    }

    #[test]
    fn a_peek_leaves_the_rotation_where_it_is() {
        let s = servers(&[1, 3]);
        let k = key([1, 1, 1, 1], 0);
        for strategy in [Balance::RoundRobin, Balance::Weighted, Balance::LeastConn] {
            let b = Balancer::new(strategy, &s);
            let mut seen = Vec::new();
            for _ in 0..8 {
                let peeked = b.peek(&s, &k, |_| true);
                assert_eq!(b.peek(&s, &k, |_| true), peeked, "{strategy:?}");
                let picked = b.pick(&s, &k, |_| true);
                assert_eq!(peeked, picked, "{strategy:?}: a peek shows the next pick");
                seen.extend(picked);
            }
            if strategy != Balance::LeastConn {
                assert!(
                    seen.contains(&0) && seen.contains(&1),
                    "{strategy:?}: {seen:?}"
                );
            }
        }
    }

    #[test]
    fn round_robin_shares_a_down_servers_turns_evenly() {
        let s = servers(&[1, 1, 1]);
        let b = Balancer::new(Balance::RoundRobin, &s);
        let mut c = [0; 3];
        for _ in 0..300 {
            if let Some(i) = b.pick(&s, &key([1, 2, 3, 4], 0), |i| i != 0) {
                c[i] += 1;
            }
        }
        assert_eq!(c, [0, 150, 150]);
        // Down servers in a pattern the rotation's period shares.
        let s = servers(&[1, 1, 1, 1]);
        let b = Balancer::new(Balance::RoundRobin, &s);
        let mut c = [0; 4];
        for _ in 0..400 {
            if let Some(i) = b.pick(&s, &key([1, 2, 3, 4], 0), |i| i % 2 == 1) {
                c[i] += 1;
            }
        }
        assert_eq!(c, [0, 200, 0, 200]);
    }

    #[test]
    fn least_conn_ties_spread_over_the_available_servers() {
        let s = servers(&[1, 1, 1]);
        let b = Balancer::new(Balance::LeastConn, &s);
        let mut c = [0; 3];
        for _ in 0..300 {
            if let Some(i) = b.pick(&s, &key([1, 2, 3, 4], 0), |i| i != 0) {
                c[i] += 1;
            }
        }
        assert_eq!(c, [0, 150, 150]);
    }

    #[test]
    fn ip_hash_spreads_a_down_servers_clients_and_moves_no_other() {
        let s = servers(&[1, 1, 1]);
        let b = Balancer::new(Balance::IpHash, &s);
        let mut moved = [0; 3];
        for n in 0..3_000u32 {
            let k = key([10, (n >> 16) as u8, (n >> 8) as u8, n as u8], 0);
            let home = b.pick(&s, &k, |_| true);
            let now = b.pick(&s, &k, |i| i != 0);
            assert_eq!(
                now,
                b.pick(&s, &k, |i| i != 0),
                "stable while nothing changes"
            );
            match (home, now) {
                (Some(0), Some(i)) => moved[i] += 1,
                (home, now) => assert_eq!(home, now, "a client of a live server moved"),
            }
        }
        let [_, one, two] = moved;
        let total = one + two;
        assert!(
            total > 800,
            "about a third of the clients were on server 0: {total}"
        );
        assert!(
            one * 10 > total * 4 && two * 10 > total * 4,
            "server 0's clients are shared about evenly: {moved:?}"
        );
    }

    #[test]
    fn weighted_follows_weights() {
        let s = servers(&[1, 3]);
        let b = Balancer::new(Balance::Weighted, &s);
        assert_eq!(counts(&b, &s, 40), vec![10, 30]);
    }

    #[test]
    fn hashes_are_stable_per_key() {
        let s = servers(&[1, 1, 1]);
        for strategy in [Balance::IpHash, Balance::ConsistentHash] {
            let b = Balancer::new(strategy, &s);
            let k = key([9, 8, 7, 6], hash_bytes(b"user-42"));
            let first = b.pick(&s, &k, |_| true);
            for _ in 0..20 {
                assert_eq!(b.pick(&s, &k, |_| true), first);
            }
        }
    }

    #[test]
    fn consistent_hash_moves_few_keys_when_a_server_goes() {
        let s = servers(&[1, 1, 1, 1]);
        let b = Balancer::new(Balance::ConsistentHash, &s);
        let mut moved = 0;
        for k in 0..1000u64 {
            let kk = key([0, 0, 0, 0], hash_bytes(&k.to_le_bytes()));
            let before = b.pick(&s, &kk, |_| true);
            let after = b.pick(&s, &kk, |i| i != 0);
            if before != Some(0) && before != after {
                moved += 1;
            }
        }
        assert_eq!(moved, 0, "keys of surviving servers stay put");
    }

    #[test]
    fn a_heavy_server_gets_a_bounded_ring_in_proportion() {
        // weight * 160 once wrapped in u32 (and in a debug build, panicked).
        let s = servers(&[30_000_000, 10_000_000]);
        let ring = build_ring(&s);
        assert!(ring.len() <= 160_000, "{}", ring.len());
        let first = ring.iter().filter(|(_, i)| *i == 0).count();
        assert_eq!((first, ring.len() - first), (120_000, 40_000));
        // Below the cap, nothing changes: 160 points per unit of weight.
        let ring = build_ring(&servers(&[1, 3]));
        assert_eq!(ring.len(), 640);
    }

    #[test]
    fn least_conn_prefers_the_idle_server() {
        let s = servers(&[1, 1]);
        let b = Balancer::new(Balance::LeastConn, &s);
        let _busy = s[0].try_begin();
        for _ in 0..5 {
            assert_eq!(b.pick(&s, &key([1, 1, 1, 1], 0), |_| true), Some(1));
        }
    }

    #[test]
    fn p2c_avoids_the_busier_of_two() {
        let s = servers(&[1, 1]);
        let b = Balancer::new(Balance::P2c, &s);
        let _busy = s[1].try_begin();
        for _ in 0..20 {
            assert_eq!(b.pick(&s, &key([1, 1, 1, 1], 0), |_| true), Some(0));
        }
    }
}
