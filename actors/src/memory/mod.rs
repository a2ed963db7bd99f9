//! The resource budget: how much memory and how many CPU threads replicas
//! may reserve in all. The memory total comes from NVML (GPU total x
//! fraction) when a GPU is present, else from configuration (default 75% of
//! system RAM); the thread total is `cpu.threads` (default: the cores
//! available). Replicas reserve their footprint (memory, and
//! `intra_op_threads`) before they start; one that does not fit is not
//! started, and is told when room is given back so it can ask again.
//!
//! A grant is a [`Reservation`] value: dropping it gives the reservation
//! back, so reservations come back however their holder goes away.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::{Actor, Addr, AsyncContext, Context, Handler, Message, MessageResult, Recipient};
use tracing::{info, warn};

/// Where the total came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemorySource {
    /// NVML reported the GPU's memory.
    Nvml,
    /// `memory.limit_mb` from configuration.
    Config,
    /// 75% of the system's RAM.
    SystemRam,
}

impl MemorySource {
    pub fn as_str(self) -> &'static str {
        match self {
            MemorySource::Nvml => "nvml",
            MemorySource::Config => "config",
            MemorySource::SystemRam => "system_ram",
        }
    }
}

/// How the budget's total is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryConfig {
    /// Explicit total; `None` means 75% of system RAM.
    pub limit_mb: Option<u64>,
    /// Share of GPU memory to use when NVML is present.
    pub gpu_fraction: f64,
    /// Ask NVML at all (tests switch it off for a fixed budget).
    pub use_nvml: bool,
    /// CPU threads replicas may use in all; `None` means twice the cores
    /// available (see [`default_cpu_threads`]).
    pub cpu_threads: Option<usize>,
}

/// The CPU thread budget when none is configured: twice the cores. A
/// replica's session sits idle between batches, so a machine serving several
/// models can hold one replica of each beyond its core count; the budget
/// still stops replica counts that would only fight over the cores.
pub fn default_cpu_threads() -> usize {
    2 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A replica that did not fit.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub owner: String,
    pub required_mb: u64,
    pub free_mb: u64,
    /// Why, in words: which resource ran out.
    pub reason: String,
}

/// The budget's state, for stats.
#[derive(Debug, Clone, PartialEq)]
pub struct MemorySnapshot {
    pub source: MemorySource,
    pub total_mb: u64,
    pub reserved_mb: u64,
    pub free_mb: u64,
    pub threads_total: usize,
    pub threads_reserved: usize,
    /// GPU memory in use now, when NVML is the source.
    pub gpu_used_mb: Option<u64>,
    pub reservations: BTreeMap<String, u64>,
    pub refused: Vec<Refusal>,
}

/// The memory budget actor.
pub struct MemoryBudget {
    source: MemorySource,
    total_mb: u64,
    threads_total: usize,
    /// Per owner: (MB, threads).
    reservations: BTreeMap<String, (u64, usize)>,
    refused: Vec<Refusal>,
    /// Refused owners to tell when room is given back.
    waiting: BTreeMap<String, Recipient<BudgetFreed>>,
    /// Free MB, published for batchers to read without a message.
    free_shared: Arc<AtomicU64>,
}

impl MemoryBudget {
    /// Chooses the total: NVML first, then the configured limit, then RAM.
    pub fn from_config(config: &MemoryConfig) -> Self {
        let (source, total_mb) = match config.use_nvml.then(nvml_memory_mb).flatten() {
            Some((gpu_mb, _)) => (
                MemorySource::Nvml,
                (gpu_mb as f64 * config.gpu_fraction) as u64,
            ),
            None => match config.limit_mb {
                Some(limit) => (MemorySource::Config, limit),
                None => (MemorySource::SystemRam, system_ram_mb() * 3 / 4),
            },
        };
        info!(source = source.as_str(), total_mb, "memory budget");
        let threads_total = config.cpu_threads.unwrap_or_else(default_cpu_threads);
        info!(threads_total, "cpu thread budget");
        MemoryBudget::with_total(source, total_mb, threads_total)
    }

    pub fn with_total(source: MemorySource, total_mb: u64, threads_total: usize) -> Self {
        MemoryBudget {
            source,
            total_mb,
            threads_total,
            reservations: BTreeMap::new(),
            refused: Vec::new(),
            waiting: BTreeMap::new(),
            free_shared: Arc::new(AtomicU64::new(total_mb)),
        }
    }

    /// The free MB, kept current as reservations come and go; batchers read
    /// it to cap batches at what memory holds.
    pub fn free_mb_shared(&self) -> Arc<AtomicU64> {
        self.free_shared.clone()
    }

    fn publish_free(&self) {
        self.free_shared.store(self.free_mb(), Ordering::Relaxed);
    }

    fn reserved_mb(&self) -> u64 {
        self.reservations.values().map(|(mb, _)| mb).sum()
    }

    fn reserved_threads(&self) -> usize {
        self.reservations.values().map(|(_, threads)| threads).sum()
    }

    fn free_mb(&self) -> u64 {
        self.total_mb.saturating_sub(self.reserved_mb())
    }

    /// Tells every refused owner that room was given back; each asks again
    /// (and waits again if it still does not fit).
    fn wake_waiters(&mut self) {
        for (owner, waiter) in std::mem::take(&mut self.waiting) {
            waiter.do_send(BudgetFreed { owner });
        }
    }
}

/// GPU 0's (total, used) memory from NVML; `None` when there is no NVML or no GPU.
fn nvml_memory_mb() -> Option<(u64, u64)> {
    let nvml = nvml_wrapper::Nvml::init().ok()?;
    let device = nvml.device_by_index(0).ok()?;
    let info = device.memory_info().ok()?;
    Some((info.total / (1024 * 1024), info.used / (1024 * 1024)))
}

/// Total RAM from `/proc/meminfo`, or 4 GiB when it cannot be read.
fn system_ram_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(4096)
}

impl Actor for MemoryBudget {
    type Context = Context<Self>;
}

/// Reserve `mb` for `owner` (for example `unet-seg/0`).
#[derive(Message)]
#[rtype(result = "Reservation")]
pub struct Reserve {
    pub owner: String,
    pub mb: u64,
    /// CPU threads (the replica's `intra_op_threads`).
    pub threads: usize,
    /// Told with [`BudgetFreed`] once room is given back, when this request
    /// is refused, so that it can ask again instead of staying refused.
    pub waiter: Option<Recipient<BudgetFreed>>,
}

/// Budget -> whoever was refused: a reservation was given back since `owner`
/// was refused; ask again. Sent once per refusal.
#[derive(Message)]
#[rtype(result = "()")]
pub struct BudgetFreed {
    pub owner: String,
}

/// The answer to [`Reserve`]: a claim on the owner's name in the budget,
/// granted (it holds the memory and threads) or refused (recorded, and
/// waiting for room). Dropping it gives back everything the budget holds for
/// the owner, so a reservation comes back however its holder goes away: a
/// replica slot removed, a message never handled, an actor stopped. There
/// is one claim per owner; a newer one for the same owner replaces the
/// older with [`Reservation::replaces`].
pub struct Reservation {
    owner: String,
    refusal: Option<Refusal>,
    /// `None` once forgotten, or when no budget answered.
    budget: Option<Addr<MemoryBudget>>,
}

impl Reservation {
    /// A refusal that holds nothing in any budget (the budget did not answer).
    pub fn unanswered(owner: String, reason: String) -> Reservation {
        Reservation {
            refusal: Some(Refusal {
                owner: owner.clone(),
                required_mb: 0,
                free_mb: 0,
                reason,
            }),
            owner,
            budget: None,
        }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// True when the budget granted it.
    pub fn is_granted(&self) -> bool {
        self.refusal.is_none()
    }

    /// Why it was refused; `None` when granted.
    pub fn refusal(&self) -> Option<&Refusal> {
        self.refusal.as_ref()
    }

    /// Takes the place of `older`, a claim for the same owner: the budget
    /// holds one entry per owner, so giving `older` back would give back
    /// this one.
    pub fn replaces(self, mut older: Reservation) -> Reservation {
        debug_assert_eq!(self.owner, older.owner);
        older.budget = None;
        self
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(budget) = self.budget.take() {
            budget.do_send(Release {
                owner: std::mem::take(&mut self.owner),
            });
        }
    }
}

impl Handler<Reserve> for MemoryBudget {
    type Result = MessageResult<Reserve>;

    fn handle(&mut self, msg: Reserve, ctx: &mut Self::Context) -> Self::Result {
        let (had_mb, had_threads) = self.reservations.get(&msg.owner).copied().unwrap_or((0, 0));
        let free = self.free_mb() + had_mb;
        let free_threads = self.threads_total.saturating_sub(self.reserved_threads()) + had_threads;
        let reason = if msg.mb > free {
            Some(format!(
                "needs {} MB of memory, the budget has {free} MB free",
                msg.mb
            ))
        } else if msg.threads > free_threads {
            Some(format!(
                "needs {} CPU threads, the cpu.threads budget has {free_threads} free",
                msg.threads
            ))
        } else {
            None
        };
        let budget = Some(ctx.address());
        if let Some(reason) = reason {
            let refusal = Refusal {
                owner: msg.owner.clone(),
                required_mb: msg.mb,
                free_mb: free,
                reason,
            };
            warn!(
                replica = %refusal.owner,
                reason = %refusal.reason,
                "replica does not fit in the resource budget; not started"
            );
            self.refused.retain(|r| r.owner != refusal.owner);
            self.refused.push(refusal.clone());
            match msg.waiter {
                Some(waiter) => self.waiting.insert(msg.owner.clone(), waiter),
                None => self.waiting.remove(&msg.owner),
            };
            return MessageResult(Reservation {
                owner: msg.owner,
                refusal: Some(refusal),
                budget,
            });
        }
        self.refused.retain(|r| r.owner != msg.owner);
        self.waiting.remove(&msg.owner);
        self.reservations
            .insert(msg.owner.clone(), (msg.mb, msg.threads));
        self.publish_free();
        if msg.mb < had_mb || msg.threads < had_threads {
            self.wake_waiters();
        }
        MessageResult(Reservation {
            owner: msg.owner,
            refusal: None,
            budget,
        })
    }
}

/// Give back what `owner` reserved, and forget its refusal if it was
/// refused. [`Reservation`] sends it when dropped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Release {
    pub owner: String,
}

impl Handler<Release> for MemoryBudget {
    type Result = ();

    fn handle(&mut self, msg: Release, _ctx: &mut Self::Context) {
        let freed = self.reservations.remove(&msg.owner).is_some();
        self.refused.retain(|r| r.owner != msg.owner);
        self.waiting.remove(&msg.owner);
        self.publish_free();
        if freed {
            self.wake_waiters();
        }
    }
}

/// Asks for the shared free MB (see [`MemoryBudget::free_mb_shared`]); a
/// batcher asks once, when it starts.
#[derive(Message)]
#[rtype(result = "Arc<AtomicU64>")]
pub struct ShareFreeMemory;

impl Handler<ShareFreeMemory> for MemoryBudget {
    type Result = MessageResult<ShareFreeMemory>;

    fn handle(&mut self, _: ShareFreeMemory, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.free_mb_shared())
    }
}

/// Asks for the budget's state.
#[derive(Message)]
#[rtype(result = "MemorySnapshot")]
pub struct GetMemorySnapshot;

impl Handler<GetMemorySnapshot> for MemoryBudget {
    type Result = MessageResult<GetMemorySnapshot>;

    fn handle(&mut self, _: GetMemorySnapshot, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(MemorySnapshot {
            source: self.source,
            total_mb: self.total_mb,
            reserved_mb: self.reserved_mb(),
            free_mb: self.free_mb(),
            threads_total: self.threads_total,
            threads_reserved: self.reserved_threads(),
            gpu_used_mb: (self.source == MemorySource::Nvml)
                .then(nvml_memory_mb)
                .flatten()
                .map(|(_, used)| used),
            reservations: self
                .reservations
                .iter()
                .map(|(owner, (mb, _))| (owner.clone(), *mb))
                .collect(),
            refused: self.refused.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reserve(owner: &str, mb: u64, threads: usize) -> Reserve {
        Reserve {
            owner: owner.into(),
            mb,
            threads,
            waiter: None,
        }
    }

    #[actix_rt::test]
    async fn refuses_what_does_not_fit_and_reports_it() {
        let budget = MemoryBudget::with_total(MemorySource::Config, 100, 2).start();
        let a0 = budget.send(reserve("a/0", 60, 1)).await.unwrap();
        assert!(a0.is_granted());
        let a1 = budget.send(reserve("a/1", 60, 1)).await.unwrap();
        let refusal = a1.refusal().unwrap();
        assert_eq!((refusal.required_mb, refusal.free_mb), (60, 40));
        let snap = budget.send(GetMemorySnapshot).await.unwrap();
        assert_eq!((snap.reserved_mb, snap.free_mb), (60, 40));
        assert_eq!(snap.refused.len(), 1);
        drop(a0);
        let a1 = budget
            .send(reserve("a/1", 60, 1))
            .await
            .unwrap()
            .replaces(a1);
        assert!(a1.is_granted());
        let snap = budget.send(GetMemorySnapshot).await.unwrap();
        assert!(snap.refused.is_empty());
        assert_eq!(snap.reserved_mb, 60);
    }

    #[actix_rt::test]
    async fn cpu_threads_are_a_budget_too() {
        let budget = MemoryBudget::with_total(MemorySource::Config, 10_000, 3).start();
        let a0 = budget.send(reserve("a/0", 1, 2)).await.unwrap();
        assert!(a0.is_granted());
        let a1 = budget.send(reserve("a/1", 1, 2)).await.unwrap();
        let reason = &a1.refusal().unwrap().reason;
        assert!(reason.contains("needs 2 CPU threads"), "{reason}");
        let b0 = budget.send(reserve("b/0", 1, 1)).await.unwrap();
        assert!(b0.is_granted());
        let snap = budget.send(GetMemorySnapshot).await.unwrap();
        assert_eq!((snap.threads_total, snap.threads_reserved), (3, 3));
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
        let budget = MemoryBudget::with_total(MemorySource::Config, 100, 1).start();
        let empty = budget.send(GetMemorySnapshot).await.unwrap();
        let woken = Arc::new(AtomicU64::new(0));
        let waiter = Waiter(woken.clone()).start().recipient();
        let held = budget.send(reserve("a/0", 50, 1)).await.unwrap();
        let mut asking = reserve("b/0", 10, 1);
        asking.waiter = Some(waiter);
        let refused = budget.send(asking).await.unwrap();
        assert!(!refused.is_granted());
        drop(held);
        let snap = budget.send(GetMemorySnapshot).await.unwrap();
        assert_eq!((snap.reserved_mb, snap.threads_reserved), (0, 0));
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
}
