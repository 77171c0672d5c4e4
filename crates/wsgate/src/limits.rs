//! Limits that keep state (the stateless ones — message size, JSON depth,
//! batch size — live where the input is parsed):
//!
//! * [`CallLimiter`] — one connection's request rate: a token bucket
//!   (`limits.message_rate`, `limits.message_burst`) and the count of
//!   refused requests that closes a persistently abusive connection (4008).
//! * [`ConnLimits`] — upgrade admission beyond `limits.max_connections`:
//!   the upgrade rate and concurrent connections per IP address, concurrent
//!   connections per user, and memory pressure ([`MemoryGuard`]).
//!
//! Everything here is off by default (a limit of 0). See
//! `docs/security.md#limits`.

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rustc_hash::{FxHashMap, FxHasher};
use tokio::time::Instant;

use crate::config::Limits;

/// A token bucket of `burst` tokens, refilled at `rate` tokens per second.
/// The rate and size are passed to each call so that many buckets with the
/// same configuration do not each store them.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(burst: f64, now: Instant) -> Self {
        TokenBucket {
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = now;
    }

    /// Takes one token, or says how long until one is available.
    pub fn try_take(&mut self, now: Instant, rate: f64, burst: f64) -> Result<(), Duration> {
        self.refill(now, rate, burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }

    /// True if the bucket has refilled completely by `now` (so its state
    /// can be forgotten: a new full bucket is the same).
    pub fn is_full(&self, now: Instant, rate: f64, burst: f64) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * rate >= burst
    }
}

/// The bucket size for a rate: `burst`, or when 0 the rate itself (at
/// least one token).
pub fn burst_for(rate: f64, burst: u32) -> f64 {
    if burst > 0 {
        burst as f64
    } else {
        rate.ceil().max(1.0)
    }
}

/// What [`CallLimiter::check`] decided about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Refused with -32002.
    Limited,
    /// Refused, and the connection has now been refused
    /// `limits.rate_limit_close_after` times within
    /// `limits.rate_limit_window`: close it (4008).
    Abusive,
}

/// One connection's request rate limit.
#[derive(Debug)]
pub struct CallLimiter {
    bucket: TokenBucket,
    rate: f64,
    burst: f64,
    close_after: u32,
    window: Duration,
    /// Refused requests in the current window.
    strikes: u32,
    window_start: Instant,
}

impl CallLimiter {
    /// `None` when `limits.message_rate` is 0 (off).
    pub fn new(limits: &Limits, now: Instant) -> Option<CallLimiter> {
        let rate = limits.message_rate;
        if rate <= 0.0 {
            return None;
        }
        let burst = burst_for(rate, limits.message_burst);
        Some(CallLimiter {
            bucket: TokenBucket::full(burst, now),
            rate,
            burst,
            close_after: limits.rate_limit_close_after,
            window: limits.rate_limit_window,
            strikes: 0,
            window_start: now,
        })
    }

    /// Charges one request.
    pub fn check(&mut self, now: Instant) -> Verdict {
        if self.bucket.try_take(now, self.rate, self.burst).is_ok() {
            return Verdict::Allowed;
        }
        if self.close_after == 0 {
            return Verdict::Limited;
        }
        if self.strikes == 0 || now.saturating_duration_since(self.window_start) >= self.window {
            self.strikes = 0;
            self.window_start = now;
        }
        self.strikes += 1;
        if self.strikes >= self.close_after {
            Verdict::Abusive
        } else {
            Verdict::Limited
        }
    }
}

/// The address a per-IP limit counts against: IPv4 addresses as they are
/// (IPv4-mapped IPv6 addresses too), IPv6 addresses by their /64 prefix,
/// since one host usually holds a whole /64.
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
        },
    }
}

/// Why [`ConnLimits::acquire`] refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `limits.max_connections_per_ip`.
    PerIp,
    /// `limits.max_connections_per_user`.
    PerUser,
}

const SHARDS: usize = 16;

#[derive(Default)]
struct IpEntry {
    /// Connections admitted from this address and still open.
    active: usize,
    /// Upgrade-rate bucket (with `limits.ip_connection_rate`).
    bucket: Option<TokenBucket>,
}

#[derive(Default)]
struct IpShard {
    map: FxHashMap<IpAddr, IpEntry>,
    /// Size at which forgettable entries are swept next.
    sweep_at: usize,
}

/// What an admitted connection holds against the per-IP and per-user
/// counts; handed back to [`ConnLimits::release`] when it ends.
#[derive(Debug, Default)]
pub struct Held {
    ip: Option<IpAddr>,
    user: Option<Arc<str>>,
}

impl Held {
    /// True when nothing was counted (the limits are off).
    pub fn is_empty(&self) -> bool {
        self.ip.is_none() && self.user.is_none()
    }
}

/// Node-wide admission state for the per-IP, per-user and memory limits.
pub struct ConnLimits {
    max_per_ip: usize,
    ip_rate: f64,
    ip_burst: f64,
    max_per_user: usize,
    ips: [Mutex<IpShard>; SHARDS],
    users: Mutex<FxHashMap<Arc<str>, usize>>,
    pub memory: MemoryGuard,
}

impl ConnLimits {
    pub fn new(limits: &Limits) -> ConnLimits {
        ConnLimits {
            max_per_ip: limits.max_connections_per_ip,
            ip_rate: limits.ip_connection_rate,
            ip_burst: burst_for(limits.ip_connection_rate, limits.ip_connection_burst),
            max_per_user: limits.max_connections_per_user,
            ips: std::array::from_fn(|_| Mutex::new(IpShard::default())),
            users: Mutex::new(FxHashMap::default()),
            memory: MemoryGuard::new(limits.max_memory),
        }
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<IpShard> {
        let mut h = FxHasher::default();
        ip.hash(&mut h);
        &self.ips[(h.finish() as usize) % SHARDS]
    }

    /// Charges one upgrade attempt against the address's rate
    /// (`limits.ip_connection_rate`); on refusal, how long until the next
    /// one would be allowed.
    pub fn check_rate(&self, peer: Option<IpAddr>, now: Instant) -> Result<(), Duration> {
        let (Some(ip), true) = (peer, self.ip_rate > 0.0) else {
            return Ok(());
        };
        let ip = ip_key(ip);
        let (rate, burst) = (self.ip_rate, self.ip_burst);
        let mut shard = self.shard(&ip).lock();
        let entry = entry(&mut shard, ip, now, rate, burst);
        entry
            .bucket
            .get_or_insert_with(|| TokenBucket::full(burst, now))
            .try_take(now, rate, burst)
    }

    /// Counts a connection against its address and user, unless one of
    /// them is at its limit. Anonymous connections (`user` = `None`) are
    /// only counted per address.
    pub fn acquire(&self, peer: Option<IpAddr>, user: Option<&str>) -> Result<Held, Refusal> {
        let mut held = Held::default();
        if let (Some(ip), true) = (peer, self.max_per_ip > 0) {
            let ip = ip_key(ip);
            let now = Instant::now();
            let mut shard = self.shard(&ip).lock();
            let e = entry(&mut shard, ip, now, self.ip_rate, self.ip_burst);
            if e.active >= self.max_per_ip {
                return Err(Refusal::PerIp);
            }
            e.active += 1;
            held.ip = Some(ip);
        }
        if let (Some(user), true) = (user, self.max_per_user > 0) {
            let mut users = self.users.lock();
            let n = users.get(user).copied().unwrap_or(0);
            if n >= self.max_per_user {
                drop(users);
                self.release(held);
                return Err(Refusal::PerUser);
            }
            let key = users
                .get_key_value(user)
                .map(|(k, _)| k.clone())
                .unwrap_or_else(|| Arc::from(user));
            users.insert(key.clone(), n + 1);
            held.user = Some(key);
        }
        Ok(held)
    }

    /// Gives back what [`ConnLimits::acquire`] counted.
    pub fn release(&self, held: Held) {
        if let Some(ip) = held.ip {
            let now = Instant::now();
            let mut shard = self.shard(&ip).lock();
            if let Some(e) = shard.map.get_mut(&ip) {
                e.active = e.active.saturating_sub(1);
                if forgettable(e, now, self.ip_rate, self.ip_burst) {
                    shard.map.remove(&ip);
                }
            }
        }
        if let Some(user) = held.user {
            let mut users = self.users.lock();
            if let Some(n) = users.get_mut(&user) {
                *n -= 1;
                if *n == 0 {
                    users.remove(&user);
                }
            }
        }
    }

    /// Addresses currently tracked (for tests: the map stays bounded).
    pub fn tracked_addresses(&self) -> usize {
        self.ips.iter().map(|s| s.lock().map.len()).sum()
    }
}

fn forgettable(e: &IpEntry, now: Instant, rate: f64, burst: f64) -> bool {
    e.active == 0
        && e.bucket
            .as_ref()
            .is_none_or(|b| b.is_full(now, rate, burst))
}

/// The entry for `ip`, sweeping forgettable entries first when the shard
/// has doubled since the last sweep (amortised O(1), and the map never
/// holds much more than the addresses with open connections or a
/// not-yet-refilled rate bucket).
fn entry(shard: &mut IpShard, ip: IpAddr, now: Instant, rate: f64, burst: f64) -> &mut IpEntry {
    if !shard.map.contains_key(&ip) && shard.map.len() >= shard.sweep_at {
        shard.map.retain(|_, e| !forgettable(e, now, rate, burst));
        shard.sweep_at = (shard.map.len() * 2).max(64);
    }
    shard.map.entry(ip).or_default()
}

/// Memory-pressure admission: above `limits.max_memory` bytes of resident
/// memory, new upgrades are refused (503) so that the node sheds load
/// instead of being killed by the OOM killer. The resident size is read
/// from `/proc/self/statm` at most every 100 ms.
pub struct MemoryGuard {
    limit: u64,
    start: std::time::Instant,
    /// Milliseconds since `start` when the next sample may be taken.
    next_sample: AtomicU64,
    rss: AtomicU64,
}

/// Minimum time between two reads of `/proc/self/statm`.
const SAMPLE_EVERY_MS: u64 = 100;

impl MemoryGuard {
    pub fn new(limit: u64) -> MemoryGuard {
        if limit > 0 && resident_bytes().is_none() {
            tracing::warn!(
                "limits.max_memory is set but /proc/self/statm cannot be read here: memory-pressure admission is off"
            );
        }
        MemoryGuard {
            limit,
            start: std::time::Instant::now(),
            next_sample: AtomicU64::new(0),
            rss: AtomicU64::new(0),
        }
    }

    /// True when the last sample (refreshed if older than 100 ms) is above
    /// the limit. Always false without a limit. The sample is stored in
    /// `gauge`.
    pub fn over_limit(&self, gauge: &prometheus_client::metrics::gauge::Gauge) -> bool {
        if self.limit == 0 {
            return false;
        }
        let now = self.start.elapsed().as_millis() as u64;
        let next = self.next_sample.load(Ordering::Relaxed);
        // One caller samples; the others use the previous value.
        if now >= next
            && self
                .next_sample
                .compare_exchange(
                    next,
                    now + SAMPLE_EVERY_MS,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            if let Some(rss) = resident_bytes() {
                self.rss.store(rss, Ordering::Relaxed);
                gauge.set(rss.min(i64::MAX as u64) as i64);
            }
        }
        self.rss.load(Ordering::Relaxed) > self.limit
    }
}

/// The process's resident set size in bytes (Linux), from
/// `/proc/self/statm` (in pages) and the page size from the auxiliary
/// vector.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_ascii_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

/// The page size: `AT_PAGESZ` from `/proc/self/auxv`, read once (4096 if
/// it cannot be read).
fn page_size() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        const AT_PAGESZ: u64 = 6;
        const WORD: usize = std::mem::size_of::<usize>();
        let word = |b: &[u8]| -> u64 {
            let mut a = [0u8; 8];
            a[..WORD].copy_from_slice(&b[..WORD]);
            u64::from_ne_bytes(a)
        };
        std::fs::read("/proc/self/auxv")
            .ok()
            .and_then(|auxv| {
                auxv.chunks_exact(2 * WORD)
                    .find(|pair| word(pair) == AT_PAGESZ)
                    .map(|pair| word(&pair[WORD..]))
            })
            .filter(|p| p.is_power_of_two())
            .unwrap_or(4096)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_refills_at_the_rate_up_to_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(3.0, t0);
        for _ in 0..3 {
            assert!(b.try_take(t0, 10.0, 3.0).is_ok());
        }
        let wait = b.try_take(t0, 10.0, 3.0).unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO);
        // 100 ms later, one token.
        let t1 = t0 + Duration::from_millis(100);
        assert!(b.try_take(t1, 10.0, 3.0).is_ok());
        assert!(b.try_take(t1, 10.0, 3.0).is_err());
        // Long after, at most the burst.
        let t2 = t1 + Duration::from_secs(60);
        assert!(b.is_full(t2, 10.0, 3.0));
        for _ in 0..3 {
            assert!(b.try_take(t2, 10.0, 3.0).is_ok());
        }
        assert!(b.try_take(t2, 10.0, 3.0).is_err());
    }

    #[test]
    fn burst_defaults_to_the_rate() {
        assert_eq!(burst_for(10.0, 0), 10.0);
        assert_eq!(burst_for(0.5, 0), 1.0);
        assert_eq!(burst_for(10.0, 25), 25.0);
    }

    fn limits(f: impl FnOnce(&mut Limits)) -> Limits {
        let mut l = Limits::default();
        f(&mut l);
        l
    }

    #[test]
    fn call_limiter_closes_after_strikes_within_the_window() {
        let l = limits(|l| {
            l.message_rate = 1.0;
            l.message_burst = 2;
            l.rate_limit_close_after = 3;
            l.rate_limit_window = Duration::from_secs(10);
        });
        let t0 = Instant::now();
        assert!(
            CallLimiter::new(&Limits::default(), t0).is_none(),
            "off by default"
        );
        let mut c = CallLimiter::new(&l, t0).unwrap();
        assert_eq!(c.check(t0), Verdict::Allowed);
        assert_eq!(c.check(t0), Verdict::Allowed);
        assert_eq!(c.check(t0), Verdict::Limited);
        assert_eq!(c.check(t0), Verdict::Limited);
        // The window expires: strikes start over.
        let t1 = t0 + Duration::from_millis(10_500);
        assert_eq!(c.check(t1), Verdict::Allowed);
        assert_eq!(c.check(t1), Verdict::Allowed);
        assert_eq!(c.check(t1), Verdict::Limited);
        assert_eq!(c.check(t1), Verdict::Limited);
        assert_eq!(c.check(t1), Verdict::Abusive);
    }

    #[test]
    fn call_limiter_without_close_only_limits() {
        let l = limits(|l| {
            l.message_rate = 1.0;
            l.rate_limit_close_after = 0;
        });
        let t0 = Instant::now();
        let mut c = CallLimiter::new(&l, t0).unwrap();
        assert_eq!(c.check(t0), Verdict::Allowed);
        for _ in 0..1000 {
            assert_eq!(c.check(t0), Verdict::Limited);
        }
    }

    #[test]
    fn ipv6_counts_by_slash_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(ip_key(mapped), "10.1.2.3".parse::<IpAddr>().unwrap());
    }

    #[tokio::test]
    async fn per_ip_and_per_user_counts() {
        let l = limits(|l| {
            l.max_connections_per_ip = 2;
            l.max_connections_per_user = 1;
        });
        let c = ConnLimits::new(&l);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = c.acquire(Some(ip), None).unwrap();
        let b = c.acquire(Some(ip), Some("alice")).unwrap();
        assert_eq!(c.acquire(Some(ip), None).unwrap_err(), Refusal::PerIp);
        // Another address, same user.
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(
            c.acquire(Some(other), Some("alice")).unwrap_err(),
            Refusal::PerUser
        );
        // The refused acquire gave its per-IP count back.
        let d = c.acquire(Some(other), Some("bob")).unwrap();
        c.release(b);
        let e = c.acquire(Some(other), Some("alice")).unwrap();
        // Without a peer address, only the user counts.
        assert_eq!(
            c.acquire(None, Some("alice")).unwrap_err(),
            Refusal::PerUser
        );
        assert!(c.acquire(None, None).is_ok());
        for h in [a, d, e] {
            c.release(h);
        }
        assert_eq!(c.tracked_addresses(), 0, "released entries are forgotten");
        assert!(c.users.lock().is_empty());
    }

    #[tokio::test]
    async fn per_ip_rate_and_bounded_map() {
        let l = limits(|l| {
            l.ip_connection_rate = 1.0;
            l.ip_connection_burst = 2;
        });
        let c = ConnLimits::new(&l);
        let t0 = Instant::now();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(c.check_rate(Some(ip), t0).is_ok());
        assert!(c.check_rate(Some(ip), t0).is_ok());
        let wait = c.check_rate(Some(ip), t0).unwrap_err();
        assert!(wait <= Duration::from_secs(1));
        assert!(c.check_rate(None, t0).is_ok(), "no address: not limited");
        // Many addresses, each once: entries are swept once refilled.
        let later = t0 + Duration::from_secs(5);
        for i in 0..10_000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            assert!(
                c.check_rate(Some(ip), later + Duration::from_secs(i as u64 * 2))
                    .is_ok()
            );
        }
        assert!(
            c.tracked_addresses() < 2 * SHARDS * 64,
            "{}",
            c.tracked_addresses()
        );
    }

    #[test]
    fn resident_memory_is_readable_here() {
        let rss = resident_bytes().expect("/proc/self/statm");
        assert!(rss > 1024 * 1024, "{rss}");
        assert!(page_size().is_power_of_two());
        let g = prometheus_client::metrics::gauge::Gauge::default();
        assert!(!MemoryGuard::new(0).over_limit(&g));
        assert!(MemoryGuard::new(1).over_limit(&g));
        assert!(g.get() > 0);
        assert!(!MemoryGuard::new(u64::MAX / 2).over_limit(&g));
    }
}
