//! Data-plane selection benchmarks: Maglev table build and lookup, and one pick per policy.
//!
//! Run: `cargo bench -p lbfleet-node --bench ring -- --warm-up-time 1 --measurement-time 3`.
//! Anchor: the Maglev paper (NSDI 2016) reports 1.8 ms to generate a table of M = 65537.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lbfleet_api::config::Policy;
use lbfleet_node::balance::ketama::HashRing;
use lbfleet_node::balance::maglev::Maglev;
use lbfleet_node::balance::policy::{BackendHandle, BuildParams, PolicySelector};
use lbfleet_node::balance::{hash_ip, hash_key_bytes};

const M: u64 = 65_537;

fn keys(n: usize) -> Vec<(String, u32)> {
    (0..n).map(|i| (format!("10.{}.{}.{}:8080", i / 65_536, (i / 256) % 256, i % 256), 1)).collect()
}

fn handles(n: usize, weighted: bool) -> Vec<Arc<BackendHandle>> {
    keys(n)
        .into_iter()
        .enumerate()
        .map(|(i, (k, _))| {
            let w = if weighted { (i % 5) as u32 + 1 } else { 1 };
            Arc::new(BackendHandle::new(k.parse().expect("bench address"), w))
        })
        .collect()
}

fn maglev_build(c: &mut Criterion) {
    let mut g = c.benchmark_group("maglev_build_m65537");
    for n in [10usize, 100, 1000] {
        let set = keys(n);
        g.bench_with_input(BenchmarkId::new("equal_weights", n), &set, |b, set| {
            b.iter(|| Maglev::build(black_box(set), M).expect("valid set"))
        });
        let weighted: Vec<(String, u32)> =
            set.iter().enumerate().map(|(i, (k, _))| (k.clone(), (i % 5) as u32 + 1)).collect();
        g.bench_with_input(BenchmarkId::new("weights_1_to_5", n), &weighted, |b, set| {
            b.iter(|| Maglev::build(black_box(set), M).expect("valid set"))
        });
    }
    g.bench_function("ring_hash_build/100", |b| {
        let set = keys(100);
        b.iter(|| HashRing::build(black_box(&set)).expect("valid set"))
    });
    g.finish();
}

fn maglev_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("maglev_lookup_m65537");
    for n in [10usize, 1000] {
        let t = Maglev::build(&keys(n), M).expect("valid set");
        let mut h = 0u64;
        g.bench_function(BenchmarkId::new("lookup", n), |b| {
            b.iter(|| {
                h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
                t.lookup(black_box(h))
            })
        });
        let mut h = 0u64;
        g.bench_function(BenchmarkId::new("fallback_first_3", n), |b| {
            b.iter(|| {
                h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
                t.fallback(black_box(h)).take(3).fold(0, |a, i| a ^ i)
            })
        });
    }
    g.finish();
}

fn keys_hashing(c: &mut Criterion) {
    let mut g = c.benchmark_group("key_hash");
    let header = b"user-8c1f0e2a-77b4";
    g.bench_function("hash_key_bytes_18B", |b| b.iter(|| hash_key_bytes(black_box(header))));
    let ip = "192.0.2.77".parse().expect("ip");
    g.bench_function("hash_ip_v4", |b| b.iter(|| hash_ip(black_box(ip))));
    g.finish();
}

fn pick(c: &mut Criterion) {
    for n in [10usize, 100] {
        let mut g = c.benchmark_group(format!("pick_first_n{n}"));
        let hs = handles(n, true);
        let params = BuildParams { table_size: M };
        for policy in Policy::ALL {
            let sel = PolicySelector::build(policy, &hs, &params).expect("valid set");
            let mut h = 0u64;
            g.bench_function(policy.as_str(), |b| {
                b.iter(|| {
                    h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    sel.pick(black_box(h)).next()
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, maglev_build, maglev_lookup, keys_hashing, pick);
criterion_main!(benches);
