//! The batcher's batch cap: free memory, measured item sizes, out-of-memory
//! holds; and a batcher reached through a [`BatcherAddr`].

use super::*;
use crate::memory::MemorySource;
use crate::messages::RetireModel;
use crate::model::BatcherAddr;
use crate::observer::NoObserver;
use crate::priority::Priority;
use crate::tensor::Tensor;

fn batcher(settings: &str) -> Batcher {
    let settings = ModelSettings::parse(settings, std::path::Path::new("m/model.toml"))
        .expect("valid settings");
    Batcher::new(
        "m".into(),
        &settings,
        Arc::new(ModelState::default()),
        Arc::new(NoObserver),
    )
}

#[test]
fn the_cap_follows_free_memory_when_the_memory_per_item_is_known() {
    let mut b = batcher("max_batch_size = 8\nmemory_per_item_mb = 100\n");
    // No budget shared yet: the configured cap.
    assert_eq!(b.cap(), (8, CapReason::MaxBatchSize));
    let budget = MemoryBudget::with_total(MemorySource::Config, 350);
    b.free_memory = Some(budget.free_memory());
    assert_eq!(b.cap(), (3, CapReason::MemoryBudget));
    let budget = MemoryBudget::with_total(MemorySource::Config, 5000);
    b.free_memory = Some(budget.free_memory());
    assert_eq!(b.cap(), (8, CapReason::MaxBatchSize));
    // Never below 1.
    let budget = MemoryBudget::with_total(MemorySource::Config, 0);
    b.free_memory = Some(budget.free_memory());
    assert_eq!(b.cap(), (1, CapReason::MemoryBudget));
    // A device the budget does not have does not cap.
    assert_eq!(
        b.cap_at(Device::Gpu(0), Instant::now()),
        (8, CapReason::MaxBatchSize)
    );
}

#[test]
fn running_out_of_memory_lowers_the_cap_for_a_while() {
    let mut b = batcher("max_batch_size = 8\n");
    let t0 = Instant::now();
    assert_eq!(b.lower_cap_after_out_of_memory(4, t0), 4);
    assert_eq!(b.cap_at(Device::Cpu, t0), (4, CapReason::OutOfMemory));
    // A later, larger success does not raise a cap in force; a smaller one lowers it.
    assert_eq!(b.lower_cap_after_out_of_memory(6, t0), 4);
    assert_eq!(b.lower_cap_after_out_of_memory(0, t0), 1);
    assert_eq!(b.cap_at(Device::Cpu, t0), (1, CapReason::OutOfMemory));
    // Once the hold is over, the configured cap is back...
    let later = t0 + OUT_OF_MEMORY_HOLD;
    assert_eq!(b.cap_at(Device::Cpu, later), (8, CapReason::MaxBatchSize));
    // ...and a new shortage starts from scratch.
    assert_eq!(b.lower_cap_after_out_of_memory(2, later), 2);
}

#[actix_rt::test]
async fn a_batcher_address_reaches_the_batcher_with_each_message_in_order() {
    let batcher = BatcherAddr::new(&batcher("max_batch_size = 8\n").start());
    let snapshot = batcher.send(GetBatcherSnapshot).await.expect("answers");
    assert_eq!((snapshot.queue_depth, snapshot.max_batch_size), (0, 8));
    // With no replica, a request waits in the queue...
    let (reply, answer) = tokio::sync::oneshot::channel();
    let now = Instant::now();
    let request = InferRequest {
        request_id: "r".into(),
        inputs: vec![Tensor::from_f32(vec![1, 4], &[0.0; 4]).unwrap()],
        items: 1,
        deadline: now + Duration::from_secs(30),
        priority: Priority::Normal,
        pin: None,
        enqueued: now,
        span: tracing::Span::none(),
        waiting: tracing::Span::none(),
        reply,
    };
    assert!(batcher.try_send(Enqueue(request)).is_ok());
    let snapshot = batcher.send(GetBatcherSnapshot).await.expect("answers");
    assert_eq!(snapshot.queue_depth, 1);
    // ...until the model retires: none could ever serve it.
    batcher.do_send(RetireModel);
    let answered = answer.await.expect("answered");
    assert!(
        matches!(answered, Err(InferError::ModelNotReady(ref m)) if m == "m"),
        "{answered:?}"
    );
}
