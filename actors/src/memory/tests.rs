//! The budget actor: refusals, claims given back, and placement
//! over a fixed inventory of fake GPUs.

use super::*;
use crate::device::{DevicePreference, FixedInventory};
use actix::Addr;

fn reserve(owner: &str, mb: u64) -> Reserve {
    Reserve {
        owner: owner.into(),
        mb,
        placement: Placement::cpu(),
        waiter: None,
        configured: true,
        headroom_mb: 0,
    }
}

#[actix_rt::test]
async fn more_than_the_whole_budget_is_refused_for_good_only_when_configured() {
    let budget = MemoryBudget::with_total(MemorySource::Config, 100).start();
    let measured = budget.send(reserve("big/0", 150)).await.unwrap();
    let refusal = measured.refusal().unwrap();
    assert!(refusal.permanent, "{refusal:?}");
    assert!(refusal
        .reason
        .contains("more than the budget's whole 100 MB"));
    // An estimate (or a measurement) may be off: it is cut to the whole
    // budget, so the model can still load alone, and measured again.
    let mut estimate = reserve("big/1", 150);
    estimate.configured = false;
    let granted = budget.send(estimate).await.unwrap();
    assert!(granted.is_granted());
    assert_eq!(granted.mb(), 100);
    // What merely does not fit now may later.
    let later = budget.send(reserve("small/0", 50)).await.unwrap();
    assert!(!later.refusal().unwrap().permanent);
}

#[actix_rt::test]
async fn refuses_what_does_not_fit_and_reports_it() {
    let budget = MemoryBudget::with_total(MemorySource::Config, 100).start();
    let a0 = budget.send(reserve("a/0", 60)).await.unwrap();
    assert!(a0.is_granted());
    let a1 = budget.send(reserve("a/1", 60)).await.unwrap();
    let refusal = a1.refusal().unwrap();
    assert_eq!((refusal.required_mb, refusal.free_mb), (60, 40));
    let snap = budget.send(GetMemorySnapshot).await.unwrap();
    assert_eq!((snap.reserved_mb, snap.free_mb), (60, 40));
    assert_eq!(snap.refused.len(), 1);
    drop(a0);
    let a1 = budget.send(reserve("a/1", 60)).await.unwrap().replaces(a1);
    assert!(a1.is_granted());
    let snap = budget.send(GetMemorySnapshot).await.unwrap();
    assert!(snap.refused.is_empty());
    assert_eq!(snap.reserved_mb, 60);
}

/// Counts the [`BudgetFreed`] it is told.
struct Waiter(Arc<AtomicU64>);

impl Actor for Waiter {
    type Context = Context<Self>;
}

impl Handler<BudgetFreed> for Waiter {
    type Result = ();

    fn handle(&mut self, _: BudgetFreed, _ctx: &mut Self::Context) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[actix_rt::test]
async fn a_dropped_claim_gives_everything_back_and_wakes_the_refused() {
    let budget = MemoryBudget::with_total(MemorySource::Config, 100).start();
    let empty = budget.send(GetMemorySnapshot).await.unwrap();
    let woken = Arc::new(AtomicU64::new(0));
    let waiter = Waiter(woken.clone()).start().recipient();
    let held = budget.send(reserve("a/0", 60)).await.unwrap();
    let mut asking = reserve("b/0", 50);
    asking.waiter = Some(waiter);
    let refused = budget.send(asking).await.unwrap();
    assert!(!refused.is_granted());
    drop(held);
    let snap = budget.send(GetMemorySnapshot).await.unwrap();
    assert_eq!(snap.reserved_mb, 0);
    // The waiter's BudgetFreed went out while the release was handled.
    tokio::task::yield_now().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while woken.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(
        woken.load(Ordering::SeqCst),
        1,
        "the refused owner is told once"
    );
    // The refusal itself is forgotten when its claim goes.
    drop(refused);
    let snap = budget.send(GetMemorySnapshot).await.unwrap();
    assert_eq!(snap, empty);
}

/// The process's resident memory as the budget reads it in
/// [`the_process_growth_is_shown_beside_the_reservations`].
static RESIDENT_MB: AtomicU64 = AtomicU64::new(40);

fn resident() -> Option<u64> {
    Some(RESIDENT_MB.load(Ordering::SeqCst))
}

#[actix_rt::test]
async fn the_process_growth_is_shown_beside_the_reservations() {
    RESIDENT_MB.store(40, Ordering::SeqCst);
    let budget = MemoryBudget::with_total(MemorySource::Config, 100)
        .showing_process_growth(resident)
        .start();
    let held = budget.send(reserve("a/0", 50)).await.unwrap();
    RESIDENT_MB.store(95, Ordering::SeqCst);
    let snap = budget.send(GetMemorySnapshot).await.unwrap();
    assert_eq!((snap.reserved_mb, snap.free_mb), (50, 50));
    assert_eq!(snap.devices[0].process_growth_mb, Some(55));
    drop(held);
    let plain = MemoryBudget::with_total(MemorySource::Config, 100).start();
    let snap = plain.send(GetMemorySnapshot).await.unwrap();
    assert_eq!(snap.devices[0].process_growth_mb, None);
}

fn on(owner: &str, mb: u64, placement: Placement) -> Reserve {
    Reserve {
        placement,
        ..reserve(owner, mb)
    }
}

fn gpus(preference: DevicePreference, gpus: Option<Vec<u32>>) -> Placement {
    Placement { preference, gpus }
}

/// A budget of 10 GB of CPU and the fake GPUs `totals_mb`, usable.
fn with_fake_gpus(totals_mb: &[u64]) -> Addr<MemoryBudget> {
    let setup = DeviceSetup {
        inventory: Arc::new(FixedInventory::with_gpus(totals_mb)),
        support: Ok(()),
    };
    MemoryBudget::with_gpus(10_000, setup).start()
}

#[actix_rt::test]
async fn replicas_spread_over_the_gpus_by_free_memory() {
    let budget = with_fake_gpus(&[1000, 1000]);
    let auto = gpus(DevicePreference::Auto, None);
    let mut held = Vec::new();
    for i in 0..4 {
        held.push(
            budget
                .send(on(&format!("m/{i}"), 300, auto.clone()))
                .await
                .unwrap(),
        );
    }
    let devices: Vec<Option<Device>> = held.iter().map(Reservation::device).collect();
    let (g0, g1) = (Some(Device::Gpu(0)), Some(Device::Gpu(1)));
    assert_eq!(devices, [g0, g1, g0, g1]);
    let snap = budget.send(GetMemorySnapshot).await.unwrap();
    let reserved: Vec<(String, u64, u64)> = snap
        .devices
        .iter()
        .map(|d| (d.device.to_string(), d.reserved_mb, d.free_mb))
        .collect();
    assert_eq!(
        reserved,
        [
            ("cpu".into(), 0, 10_000),
            ("gpu:0".into(), 600, 400),
            ("gpu:1".into(), 600, 400)
        ]
    );
    // The top-level figures are the CPU's, untouched by GPU replicas.
    assert_eq!((snap.reserved_mb, snap.free_mb), (0, 10_000));
    // A scale-up goes where the most is free: gpu:1 once gpu:0 is fuller.
    let extra = budget.send(on("n/0", 100, auto.clone())).await.unwrap();
    assert_eq!(extra.device(), g0);
    let next = budget.send(on("n/1", 100, auto.clone())).await.unwrap();
    assert_eq!(next.device(), g1);
    // Batchers see each device's free memory.
    let free = budget.send(ShareFreeMemory).await.unwrap();
    assert_eq!(free.free_mb(Device::Gpu(0)), Some(300));
    assert_eq!(free.free_mb(Device::Cpu), Some(10_000));
    drop(held);
    let snap = budget.send(GetMemorySnapshot).await.unwrap();
    assert_eq!(snap.devices[1].reserved_mb, 100);
    assert_eq!(free.free_mb(Device::Gpu(0)), Some(900));
}

#[actix_rt::test]
async fn unequal_gpus_fill_the_larger_first_and_gpus_limits_the_choice() {
    let budget = with_fake_gpus(&[1000, 3000]);
    let auto = gpus(DevicePreference::Auto, None);
    let a = budget.send(on("a/0", 500, auto.clone())).await.unwrap();
    let b = budget.send(on("a/1", 500, auto.clone())).await.unwrap();
    assert_eq!(
        (a.device(), b.device()),
        (Some(Device::Gpu(1)), Some(Device::Gpu(1)))
    );
    let only_first = gpus(DevicePreference::Gpu, Some(vec![0]));
    let c = budget
        .send(on("b/0", 600, only_first.clone()))
        .await
        .unwrap();
    assert_eq!(c.device(), Some(Device::Gpu(0)));
    let d = budget.send(on("b/1", 600, only_first)).await.unwrap();
    let reason = &d.refusal().unwrap().reason;
    assert!(
        reason.contains("needs 600 MB") && reason.contains("400 MB free (gpu:0)"),
        "{reason}"
    );
    // device = "cpu" stays on the CPU even with GPUs free.
    let e = budget.send(on("c/0", 600, Placement::cpu())).await.unwrap();
    assert_eq!(e.device(), Some(Device::Cpu));
}

#[actix_rt::test]
async fn a_gpu_model_without_a_usable_gpu_is_refused_with_the_reason() {
    let setup = DeviceSetup {
        inventory: Arc::new(FixedInventory::none("NVML is not usable: no driver")),
        support: Ok(()),
    };
    let budget = MemoryBudget::with_gpus(1000, setup).start();
    let woken = Arc::new(AtomicU64::new(0));
    let mut asking = on("m/0", 100, gpus(DevicePreference::Gpu, None));
    asking.waiter = Some(Waiter(woken.clone()).start().recipient());
    let refused = budget.send(asking).await.unwrap();
    let reason = &refused.refusal().unwrap().reason;
    assert!(
        reason.contains("device = \"gpu\" but no GPU is usable: NVML is not usable"),
        "{reason}"
    );
    // Auto serves on the CPU instead.
    let auto = budget
        .send(on("n/0", 100, gpus(DevicePreference::Auto, None)))
        .await
        .unwrap();
    assert_eq!(auto.device(), Some(Device::Cpu));
    // Room given back does not wake a model waiting for a missing GPU.
    drop(auto);
    let snap = budget.send(GetMemorySnapshot).await.unwrap();
    assert_eq!(snap.refused.len(), 1);
    assert_eq!(snap.devices.len(), 1, "no GPU budget without a GPU");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(woken.load(Ordering::SeqCst), 0);
}

#[actix_rt::test]
async fn gpus_without_engine_support_get_no_budget() {
    let setup = DeviceSetup {
        inventory: Arc::new(FixedInventory::with_gpus(&[1000])),
        support: Err("the CPU build of ONNX Runtime".into()),
    };
    let budget = MemoryBudget::with_gpus(1000, setup).start();
    let snap = budget.send(GetMemorySnapshot).await.unwrap();
    assert_eq!(snap.devices.len(), 1);
    let gpu = budget
        .send(on("m/0", 100, gpus(DevicePreference::Gpu, None)))
        .await
        .unwrap();
    assert!(gpu
        .refusal()
        .unwrap()
        .reason
        .contains("the CPU build of ONNX Runtime"));
}

#[actix_rt::test]
async fn a_load_holds_its_headroom_on_the_cpu_only() {
    let budget = with_fake_gpus(&[1000]);
    let mut cpu = on("c/0", 100, Placement::cpu());
    cpu.headroom_mb = 40;
    assert_eq!(budget.send(cpu).await.unwrap().mb(), 140);
    let mut gpu = on("g/0", 100, gpus(DevicePreference::Gpu, None));
    gpu.headroom_mb = 40;
    let held = budget.send(gpu).await.unwrap();
    assert_eq!((held.device(), held.mb()), (Some(Device::Gpu(0)), 100));
}
