//! Looks for what an earlier instance of itself left behind — a global it counts its calls in,
//! heap it covered with a mark — then leaves the same marks. The host gives every phase a fresh
//! instance and resets a reused memory slot: it must find nothing, however often it runs.

use std::sync::atomic::{AtomicU32, Ordering};
use themis_runbook_sdk::prelude::*;

static CALLS: AtomicU32 = AtomicU32::new(0);
const HEAP: usize = 256 << 10;
/// What this step writes all over its heap; the allocator's own bookkeeping never looks like it.
const MARK: &[u8; 16] = b"LEFTOVER-MARK-42";

fn look() -> Check {
    let earlier = CALLS.fetch_add(1, Ordering::SeqCst);
    let mut heap: Vec<u8> = Vec::with_capacity(HEAP);
    let base = heap.as_mut_ptr();
    // Deliberately reads memory this instance never wrote (that is the point of the fixture);
    // volatile, so the compiler cannot assume anything about it.
    let seen: Vec<u8> = (0..HEAP)
        .map(|i| unsafe { std::ptr::read_volatile(base.add(i)) })
        .collect();
    let marks = seen.chunks_exact(MARK.len()).filter(|c| c == MARK).count();
    heap.extend(MARK.iter().copied().cycle().take(HEAP));
    std::hint::black_box(&heap);
    // Kept allocated, so the marks stay in this instance's memory until it is dropped.
    std::mem::forget(heap);
    Check::from_bool(
        earlier == 0 && marks == 0,
        format!("{earlier} earlier call(s) seen, {marks} mark(s) found on the heap"),
    )
    .output("earlier_calls", earlier)
    .output("marks", marks)
}

#[derive(Default)]
struct Leftovers;

impl Step<dyn Kafka> for Leftovers {
    fn precondition(&self, _: &Context, _: &dyn Kafka) -> Check {
        look()
    }
    fn action(&self, _: &Context, _: &dyn Kafka) -> Outcome {
        Outcome::ok("ok")
    }
    fn postcondition(&self, _: &Context, _: &dyn Kafka) -> Check {
        look()
    }
    fn rollback(&self, _: &Context, _: &dyn Kafka) -> Check {
        Check::pass("ok")
    }
}

export_kafka_step!(Leftovers);
