//! What a batcher learns about memory from its replicas: a batch that ran
//! out of memory lowers the cap for a while to the largest size that ran,
//! and warmup's measure of the memory one item needs caps batches at what
//! the device's free budget holds.

use std::time::Instant;

use actix::Handler;
use tracing::{info, warn};

use super::{Batcher, OUT_OF_MEMORY_HOLD};
use crate::messages::{ItemMemoryMeasured, RanOutOfMemory};

impl Batcher {
    /// Caps batches at `largest_ok` items (at least 1) for
    /// [`OUT_OF_MEMORY_HOLD`] from `now`, keeping a lower cap already in
    /// force; returns the cap.
    pub(super) fn lower_cap_after_out_of_memory(
        &mut self,
        largest_ok: usize,
        now: Instant,
    ) -> usize {
        let mut limit = largest_ok.max(1);
        if let Some((current, until)) = self.out_of_memory_cap {
            if now < until {
                limit = limit.min(current);
            }
        }
        self.out_of_memory_cap = Some((limit, now + OUT_OF_MEMORY_HOLD));
        limit
    }
}

impl Handler<RanOutOfMemory> for Batcher {
    type Result = ();

    /// Lowers the cap to the largest size that ran (at least 1) for
    /// [`OUT_OF_MEMORY_HOLD`]; a lower cap already in force stays.
    fn handle(&mut self, msg: RanOutOfMemory, _ctx: &mut Self::Context) {
        let limit = self.lower_cap_after_out_of_memory(msg.largest_ok, Instant::now());
        warn!(
            model = %self.model,
            replica = msg.replica,
            batch_size = msg.batch_size,
            cap = limit,
            hold_s = OUT_OF_MEMORY_HOLD.as_secs(),
            "a batch ran out of memory; lowering the batch cap"
        );
    }
}

impl Handler<ItemMemoryMeasured> for Batcher {
    type Result = ();

    /// Warmup's measure of the memory per item, unless `model.toml` set it.
    fn handle(&mut self, msg: ItemMemoryMeasured, ctx: &mut Self::Context) {
        if self.memory_per_item_configured {
            return;
        }
        info!(
            model = %self.model,
            replica = msg.replica,
            mb_per_item = msg.mb_per_item,
            "measured the memory one batch item needs"
        );
        self.memory_per_item_mb = Some(msg.mb_per_item.max(1));
        self.dispatch(ctx);
    }
}
