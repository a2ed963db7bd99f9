//! A replica's claim on the budget: granted (holding memory on one device
//! and CPU threads) or refused (recorded, and waiting for room). Dropping
//! it gives everything back.

use actix::Addr;

use super::{MemoryBudget, Refusal, Release};
use crate::device::Device;

/// The answer to [`Reserve`](super::Reserve): a claim on the owner's name in the budget,
/// granted (it holds the memory and threads) or refused (recorded, and
/// waiting for room). Dropping it gives back everything the budget holds for
/// the owner, so a reservation comes back however its holder goes away: a
/// replica slot removed, a message never handled, an actor stopped. There
/// is one claim per owner; a newer one for the same owner replaces the
/// older with [`Reservation::replaces`].
pub struct Reservation {
    pub(super) owner: String,
    /// The device it holds memory on; `None` when refused.
    pub(super) device: Option<Device>,
    /// The MB it holds there.
    pub(super) mb: u64,
    pub(super) refusal: Option<Refusal>,
    /// `None` once forgotten, or when no budget answered.
    pub(super) budget: Option<Addr<MemoryBudget>>,
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
                permanent: false,
            }),
            owner,
            device: None,
            mb: 0,
            budget: None,
        }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The device the granted memory is on; `None` when refused.
    pub fn device(&self) -> Option<Device> {
        self.device
    }

    /// The MB held on [`Reservation::device`]: what the replica's engine
    /// may take there (the CUDA provider's arena limit).
    pub fn mb(&self) -> u64 {
        self.mb
    }

    /// Notes that the budget now holds `mb` for it ([`super::Resize`]).
    pub(crate) fn resized(&mut self, mb: u64) {
        self.mb = mb;
    }

    /// True when the budget granted it.
    pub fn is_granted(&self) -> bool {
        self.refusal.is_none()
    }

    /// True when refused for now only: room given back may let it in.
    pub fn may_fit_later(&self) -> bool {
        self.refusal.as_ref().is_some_and(|r| !r.permanent)
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
