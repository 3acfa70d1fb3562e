//! The cluster link itself (`proxycache::stdlib::cluster::Cluster`) over real sockets:
//! a pooled connection Redis closed is replaced, not reported as Redis being away;
//! `redis.timeout` bounds a whole call (connect, AUTH and the command together, and a
//! reply that trickles in); failures say what they are.

mod common;

use std::time::{Duration, Instant};

use common::redis::{FakeRedis, RedisServer, Script};
use proxycache::stdlib::cluster::{Cluster, RedisSettings};

fn cluster(url: String, timeout_ms: u64) -> Cluster {
    Cluster::new(Some(RedisSettings {
        url,
        timeout: Duration::from_millis(timeout_ms),
        key_prefix: "t:".to_owned(),
    }))
}

/// Runs `f` on a thread of its own: each worker thread has its own connection, and a
/// test must not find another test's.
fn on_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f)
        .join()
        .unwrap_or_else(|_| panic!("test thread panicked"))
}

/// `c.get("k")`'s error, which must come within `limit`.
fn get_fails_within(c: &Cluster, limit: Duration) -> String {
    let start = Instant::now();
    let r = c.get("k");
    let took = start.elapsed();
    let err = match r {
        Ok(v) => panic!("answered after {took:?}: {v:?}"),
        Err(e) => e.to_string(),
    };
    assert!(took < limit, "took {took:?}");
    err
}

#[test]
fn a_connection_redis_closed_is_replaced_not_reported() {
    on_thread(|| {
        let redis = RedisServer::start();
        let c = cluster(redis.url(), 500);
        c.set("k", b"v", Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("set: {e}"));
        // Redis drops every client (as on its idle `timeout`, or a restart).
        let killed = redis.command(&[b"CLIENT", b"KILL", b"TYPE", b"normal"]);
        assert_eq!(killed, b":1\r\n", "{}", String::from_utf8_lossy(&killed));
        std::thread::sleep(Duration::from_millis(100));
        let got = c
            .get("k")
            .unwrap_or_else(|e| panic!("get after the close: {e}"));
        assert_eq!(got.as_deref(), Some(&b"v"[..]));
        // ...and Redis is not resting: the next call goes to it too.
        c.del("k").unwrap_or_else(|e| panic!("del: {e}"));
        assert_eq!(c.get("k").unwrap_or_else(|e| panic!("get: {e}")), None);
    });
}

#[test]
fn an_idle_connection_redis_timed_out_is_replaced() {
    on_thread(|| {
        let redis = RedisServer::start();
        let set = redis.command(&[b"CONFIG", b"SET", b"timeout", b"1"]);
        assert_eq!(set, b"+OK\r\n");
        let c = cluster(redis.url(), 500);
        for round in 0..2 {
            c.set("k", b"v", Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("set, round {round}: {e}"));
            // Longer than Redis's idle timeout of 1s.
            std::thread::sleep(Duration::from_millis(2500));
        }
        let got = c.get("k").unwrap_or_else(|e| panic!("get: {e}"));
        assert_eq!(got.as_deref(), Some(&b"v"[..]));
    });
}

#[test]
fn one_deadline_covers_connect_auth_and_the_command() {
    on_thread(|| {
        // AUTH and GET are each answered after 400ms: each alone is within the 500ms
        // timeout, the call is not. (The scale leaves a loaded CI machine 250ms of
        // slack between the deadline and a call that waited for both answers.)
        let fake = FakeRedis::start(Script {
            delay: Duration::from_millis(400),
            trickle: None,
        });
        let c = cluster(format!("redis://:pw@{}", fake.addr), 500);
        let err = get_fails_within(&c, Duration::from_millis(750));
        assert!(err.contains("timed out after 500ms"), "{err}");
    });
}

#[test]
fn a_reply_that_trickles_is_cut_at_the_deadline() {
    on_thread(|| {
        // 17 bytes of reply, one every 100ms: every read makes progress, the call
        // would take 1.7s.
        let fake = FakeRedis::start(Script {
            delay: Duration::ZERO,
            trickle: Some((b"0123456789".to_vec(), Duration::from_millis(100))),
        });
        let c = cluster(format!("redis://{}", fake.addr), 400);
        let err = get_fails_within(&c, Duration::from_millis(1200));
        assert!(err.contains("timed out after 400ms"), "{err}");
        assert!(!err.contains("os error"), "{err}");
    });
}

#[test]
fn a_timeout_on_a_pooled_connection_is_not_retried() {
    on_thread(|| {
        let fake = FakeRedis::start(Script {
            delay: Duration::from_millis(1000),
            trickle: None,
        });
        let c = cluster(format!("redis://{}", fake.addr), 300);
        c.set("k", b"v", Duration::from_secs(1))
            .unwrap_or_else(|e| panic!("set: {e}"));
        let start = Instant::now();
        assert!(c.get("k").is_err());
        let took = start.elapsed();
        assert!(took < Duration::from_millis(900), "took {took:?}");
        assert_eq!(
            fake.accepted.load(std::sync::atomic::Ordering::Relaxed),
            1,
            "no second connection for a timeout"
        );
    });
}

#[test]
fn a_wrong_password_or_database_says_so() {
    on_thread(|| {
        let redis = RedisServer::start();
        let set = redis.command(&[b"CONFIG", b"SET", b"requirepass", b"right"]);
        assert_eq!(set, b"+OK\r\n");
        let wrong = cluster(format!("redis://:wrong@{}", redis.addr), 500);
        let err = wrong
            .get("k")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("authentication failed"), "{err}");
        assert!(!err.contains("wrong"), "no password in messages: {err}");

        let none = cluster(redis.url(), 500);
        let err = none
            .get("k")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("authentication failed"), "{err}");

        let db = cluster(format!("redis://:right@{}/99", redis.addr), 500);
        let err = db.get("k").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("database 99"), "{err}");

        let right = cluster(format!("redis://:right@{}/3", redis.addr), 500);
        assert_eq!(right.get("k").unwrap_or_else(|e| panic!("{e}")), None);
    });
}

/// A relay in front of `redis` that drops the reply of the `drop_nth` script result
/// (an array reply) and closes that client connection: Redis ran the command, the
/// caller never hears so.
fn relay_dropping_reply(redis: std::net::SocketAddr, drop_nth: usize) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let arrays = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            let arrays = Arc::clone(&arrays);
            std::thread::spawn(move || {
                let Ok(mut server) = std::net::TcpStream::connect(redis) else {
                    return;
                };
                let mut buf = [0u8; 64 * 1024];
                loop {
                    let Ok(n) = client.read(&mut buf) else { return };
                    if n == 0 || server.write_all(&buf[..n]).is_err() {
                        return;
                    }
                    let Ok(m) = server.read(&mut buf) else { return };
                    if m == 0 {
                        return;
                    }
                    if buf[0] == b'*' && arrays.fetch_add(1, Ordering::SeqCst) + 1 == drop_nth {
                        // The script ran; its answer is lost with the connection.
                        return;
                    }
                    if client.write_all(&buf[..m]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A command whose reply was lost is not sent again: the rate-limit script is not
/// idempotent, and the retry took a second token (remaining went 9, 8, 6, 5). The call
/// fails (the caller falls back to local state) and the token it took stays taken.
#[test]
fn a_command_whose_reply_was_lost_is_not_run_twice() {
    on_thread(|| {
        let redis = RedisServer::start();
        let relay = relay_dropping_reply(redis.addr, 3);
        let c = cluster(format!("redis://{relay}"), 500);
        let hour = Duration::from_secs(3600);
        let take = || c.rate_limit("once", 1.0, 10, hour);
        let first = take().unwrap_or_else(|e| panic!("first: {e}"));
        let second = take().unwrap_or_else(|e| panic!("second: {e}"));
        assert_eq!((first.remaining, second.remaining), (9, 8));
        assert!(take().is_err(), "the lost reply is an error, not a retry");
        // Past the rest after a failure.
        std::thread::sleep(Duration::from_millis(1100));
        let fourth = take().unwrap_or_else(|e| panic!("fourth: {e}"));
        assert_eq!(fourth.remaining, 6, "one token for the lost reply, not two");
    });
}
