//! What `hostile` and `hostile-events` do on purpose.

use std::hint::black_box;
use std::time::{Duration, Instant};

/// Recursion the compiler can't turn into a loop: work after the call, and a value it
/// can't see through.
#[inline(never)]
#[allow(unconditional_recursion)]
pub fn recurse(n: u64) -> u64 {
    let here = black_box(n);
    recurse(here + 1).wrapping_mul(black_box(3)) ^ here
}

pub fn spin_forever() -> ! {
    let mut n = 0u64;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

pub fn eat_memory() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; 1 << 20];
        // touch every page so the memory is really used
        for i in (0..chunk.len()).step_by(4096) {
            chunk[i] = black_box(i as u8 | 1);
        }
        hoard.push(black_box(chunk));
        black_box(&hoard);
    }
}

pub fn spin_for(d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        black_box(0u64);
    }
}
