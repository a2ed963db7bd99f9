//! What the budget holds, told to the arbiter that decides what leaves
//! memory ([`GetLedger`]), and the room it promises a model once it has
//! decided ([`Earmark`]).

use std::collections::BTreeMap;

use actix::{AsyncContext, Handler, Message};

use super::earmarks::EARMARK_TTL;
use super::MemoryBudget;
use crate::device::{self, Device, Placement};

/// One device as [`GetLedger`] tells it.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerDevice {
    pub device: Device,
    pub total_mb: u64,
    pub free_mb: u64,
}

/// What the budget holds, for whoever decides what leaves memory: the
/// devices a placement allows, with their free memory, every granted
/// reservation's device and size, and what the claim asked about would
/// hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ledger {
    pub devices: Vec<LedgerDevice>,
    pub held: BTreeMap<String, (Device, u64)>,
    /// What a [`Reserve`] of the [`GetLedger`]'s figures would hold.
    pub needs_mb: u64,
}

/// Asks for the [`Ledger`] of the devices `placement` allows; `Err` says
/// why it allows none.
#[derive(Message)]
#[rtype(result = "Result<Ledger, String>")]
pub struct GetLedger {
    pub placement: Placement,
    /// The claim to make room for, as [`Reserve`] would carry it.
    pub mb: u64,
    pub headroom_mb: u64,
    pub configured: bool,
    /// The model asking: room earmarked for it counts as free, room
    /// earmarked for others does not.
    pub model: String,
}

impl Handler<GetLedger> for MemoryBudget {
    type Result = Result<Ledger, String>;

    fn handle(&mut self, msg: GetLedger, _ctx: &mut Self::Context) -> Self::Result {
        let candidates = device::candidates(&msg.placement, &self.visible, &self.setup.support)?;
        let needs_mb = self.to_hold(&candidates, msg.mb, msg.headroom_mb, msg.configured);
        let devices = candidates
            .into_iter()
            .filter_map(|device| {
                let budget = self.devices.get(&device)?;
                Some(LedgerDevice {
                    device,
                    total_mb: budget.total_mb,
                    free_mb: self.free_for(device, Some(&msg.model)),
                })
            })
            .collect();
        let held = self
            .reservations
            .iter()
            .map(|(owner, held)| (owner.clone(), (held.device, held.mb)))
            .collect();
        Ok(Ledger {
            devices,
            held,
            needs_mb,
        })
    }
}

/// Promises `mb` on `device` to `model` (see [`super::earmarks`]): the
/// arbiter made room there for one of its replicas.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Earmark {
    pub model: String,
    pub device: Device,
    pub mb: u64,
}

impl Handler<Earmark> for MemoryBudget {
    type Result = ();

    fn handle(&mut self, msg: Earmark, ctx: &mut Self::Context) {
        self.earmarks.set(&msg.model, msg.device, msg.mb);
        self.publish_free();
        // A replica of the model refused before may now ask again.
        let refused: Vec<String> = self
            .waiting
            .keys()
            .filter(|owner| super::earmarks::model_of(owner) == msg.model)
            .cloned()
            .collect();
        for owner in refused {
            if let Some(waiter) = self.waiting.remove(&owner) {
                waiter.do_send(super::BudgetFreed { owner });
            }
        }
        // An unkept promise gives its room to the others again.
        ctx.run_later(EARMARK_TTL, |budget, _| {
            if budget.earmarks.expire() {
                budget.publish_free();
                budget.wake_waiters();
            }
        });
    }
}
