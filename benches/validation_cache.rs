//! Verdict-cache lookups (issue 13): a hit on a full 200 000-entry cache (the default cap),
//! built with `mxgate::validate::cache` directly. A cache hit must cost microseconds: the
//! target is < 2 µs per lookup, key building included. `cargo bench --bench validation_cache`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};

use mxgate::validate::cache::{CacheSettings, VerdictCache};
use mxgate::validate::Verdict;

const ENTRIES: usize = 200_000;
const METHOD: &str = "callahead:example.com";

fn full_cache() -> VerdictCache {
    let c = VerdictCache::new(CacheSettings::default());
    for i in 0..ENTRIES {
        // Three valid entries to one invalid, as a site under a mild harvest would hold.
        let v = if i % 4 == 0 {
            Verdict::Invalid
        } else {
            Verdict::Valid
        };
        c.insert(c.key(METHOD, &format!("user{i}@example.com")), v, 1_000);
    }
    c
}

fn bench(c: &mut Criterion) {
    let cache = full_cache();
    let addresses: Vec<String> = (0..1024)
        .map(|i| format!("User{}@Example.com", (i * 193) % ENTRIES))
        .collect();
    let mut i = 0;
    c.bench_function("validation_cache_hit_200k", |b| {
        b.iter(|| {
            i = (i + 1) % addresses.len();
            let key = cache.key(METHOD, black_box(&addresses[i]));
            black_box(cache.get(&key, 2_000))
        })
    });
    let missing = cache.key(METHOD, "nobody@example.com");
    c.bench_function("validation_cache_miss_200k", |b| {
        b.iter(|| black_box(cache.get(black_box(&missing), 2_000)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
