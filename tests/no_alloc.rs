//! The streaming step allocates nothing: a counting global allocator proves it for
//! compile-time and run-time shapes of every built-in cell.

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::cell::Cell as StdCell;

use fused_rnn::cell::Cell;
use fused_rnn::prelude::*;

struct Counting;

thread_local! {
    static ALLOCATIONS: StdCell<usize> = const { StdCell::new(0) };
}

// SAFETY: forwards to the system allocator; the counter is a const-initialised thread-local
// without destructor, so touching it never allocates or re-enters the allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: AllocLayout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(|c| c.get())
}

/// Runs 50 streaming steps and returns how many allocations they made, plus the last output.
fn stream_allocations<C: Cell<f32>>(cell: &C, batch: usize) -> (usize, f32) {
    let mut stream = Stream::new(cell, batch).unwrap();
    let x = vec![0.25f32; batch * cell.input_size()];
    let before = allocations();
    let mut last = 0.0;
    for _ in 0..50 {
        last = stream.step(&x).unwrap()[0];
    }
    (allocations() - before, last)
}

#[test]
fn streaming_step_allocates_nothing() {
    let lstm =
        StaticLstm::<f32, 8, 16>::random(Const, Const, LstmKind::default(), true, 1).unwrap();
    let gru = StaticGru::<f32, 8, 16>::random(Const, Const, GruKind::default(), true, 1).unwrap();
    let gru_rb = StaticGru::<f32, 8, 16>::random(
        Const,
        Const,
        GruKind {
            reset_after: false,
            ..Default::default()
        },
        true,
        1,
    )
    .unwrap();
    let rnn =
        StaticSimpleRnn::<f32, 8, 16>::random(Const, Const, SimpleRnnKind::default(), true, 1)
            .unwrap();
    let dyn_lstm = DynLstm::<f32>::random(Dyn(8), Dyn(16), LstmKind::default(), true, 1).unwrap();
    // bfloat16 weights: their copies are made by `Stream::new`, and the input projection's
    // rounded rows live on the stack.
    let mut bf16_lstm = dyn_lstm.clone();
    bf16_lstm.set_bf16_inference(true);
    let mut bf16_gru = DynGru::<f32>::random(Dyn(8), Dyn(16), GruKind::default(), true, 1).unwrap();
    bf16_gru.set_bf16_inference(true);
    let mut bf16_rnn =
        DynSimpleRnn::<f32>::random(Dyn(8), Dyn(16), SimpleRnnKind::default(), true, 1).unwrap();
    bf16_rnn.set_bf16_inference(true);

    // The counter must see allocations at all, or a zero below would prove nothing.
    let before = allocations();
    let v: Vec<u8> = std::hint::black_box(Vec::with_capacity(64));
    assert!(allocations() > before && v.capacity() >= 64);

    for batch in [1, 4] {
        let runs = [
            ("static lstm", stream_allocations(&lstm, batch)),
            ("static gru", stream_allocations(&gru, batch)),
            (
                "static gru reset-before",
                stream_allocations(&gru_rb, batch),
            ),
            ("static simple rnn", stream_allocations(&rnn, batch)),
            ("dyn lstm", stream_allocations(&dyn_lstm, batch)),
            ("bf16 lstm", stream_allocations(&bf16_lstm, batch)),
            ("bf16 gru", stream_allocations(&bf16_gru, batch)),
            ("bf16 simple rnn", stream_allocations(&bf16_rnn, batch)),
        ];
        for (name, (count, last)) in runs {
            assert_eq!(
                count, 0,
                "{name} B={batch} allocated {count} times in 50 steps"
            );
            assert!(last.is_finite() && last != 0.0, "{name} produced {last}");
        }
    }
}
