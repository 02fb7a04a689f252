//! CA benchmark: cost of a TLS server configuration for a new host (leaf signed + config built),
//! of a cached lookup, and, as the baseline measured in the same run, of one raw ECDSA P-256
//! signature with ring. Run with `cargo bench --bench ca`.
//!
//! Reported as p50/p99 and as ratios to the baseline, since the machine is shared and noisy.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use httpjail::ca::Authority;
use httpjail::config::CaLocation;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};

const NEW_HOSTS: usize = 2000;
const CACHED_ROUNDS: usize = 20;

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    let rank = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[rank]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

struct Stats {
    p50: Duration,
    p99: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    Stats {
        p50: percentile(&mut samples, 0.50),
        p99: percentile(&mut samples, 0.99),
    }
}

fn sign_baseline(n: usize) -> Vec<Duration> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    // About the size of a leaf's to-be-signed part.
    let message = [0x5au8; 400];
    (0..n)
        .map(|_| {
            let start = Instant::now();
            black_box(key.sign(&rng, black_box(&message)).unwrap());
            start.elapsed()
        })
        .collect()
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("httpjail");
    let location = CaLocation {
        cert: dir.join("ca-cert.pem"),
        key: dir.join("ca-key.pem"),
        managed_dir: Some(dir.clone()),
        owner: None,
    };
    let start = Instant::now();
    let ca = Authority::load_or_create(&location).unwrap();
    let create = start.elapsed();
    let start = Instant::now();
    let reloaded = Authority::load_or_create(&location).unwrap();
    let reload = start.elapsed();
    drop(reloaded);

    // Warm up code paths and the allocator.
    sign_baseline(200);
    for i in 0..200 {
        black_box(ca.server_config(&format!("warm{i}.bench.test")).unwrap());
    }

    let mut baseline = sign_baseline(NEW_HOSTS);

    let names: Vec<String> = (0..NEW_HOSTS)
        .map(|i| format!("host-{i}.example{}.test", i % 37))
        .collect();
    let new_host: Vec<Duration> = names
        .iter()
        .map(|name| {
            let start = Instant::now();
            black_box(ca.server_config(name).unwrap());
            start.elapsed()
        })
        .collect();
    let new_ip: Vec<Duration> = (0..500u32)
        .map(|i| {
            let name = format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255);
            let start = Instant::now();
            black_box(ca.server_config(&name).unwrap());
            start.elapsed()
        })
        .collect();

    // The last 500 host names are still in the cache (capacity 1024, 500 IPs came after them).
    let hot = &names[NEW_HOSTS - 500..];
    let mut cached = Vec::with_capacity(hot.len() * CACHED_ROUNDS);
    for _ in 0..CACHED_ROUNDS {
        for name in hot {
            let start = Instant::now();
            black_box(ca.server_config(name).unwrap());
            cached.push(start.elapsed());
        }
    }

    baseline.extend(sign_baseline(NEW_HOSTS));

    let sign = stats(baseline);
    let new_host = stats(new_host);
    let new_ip = stats(new_ip);
    let cached = stats(cached);
    println!("CA benchmark (release, this machine, one thread)");
    println!(
        "  create CA (keygen, sign, write, fsync): {:>9.1} µs",
        us(create)
    );
    println!(
        "  load existing CA:                       {:>9.1} µs",
        us(reload)
    );
    println!(
        "  baseline: raw ECDSA P-256 sign (ring)   p50 {:>7.1} µs   p99 {:>7.1} µs",
        us(sign.p50),
        us(sign.p99)
    );
    for (label, s) in [
        ("new host name (leaf + ServerConfig)", &new_host),
        ("new IP literal (leaf + ServerConfig)", &new_ip),
        ("cached lookup", &cached),
    ] {
        println!(
            "  {label:<38} p50 {:>7.2} µs   p99 {:>7.2} µs   p50 = {:.2}× one signature",
            us(s.p50),
            us(s.p99),
            us(s.p50) / us(sign.p50)
        );
    }
    println!(
        "  cached lookup is {:.0}× faster than issuing",
        us(new_host.p50) / us(cached.p50)
    );
}
