//! Shutdown as the service sees it, whatever the protocol. SIGTERM/SIGINT
//! first starts draining: readiness answers 503 while predictions are still
//! served for `server.drain_delay_s`, so load balancers stop routing here.
//! Then new requests are refused (`shutting_down`) while those admitted
//! before finish, within `server.shutdown_timeout_s`. Each edge admits its
//! requests here ([`Shutdown::admit`]) so the signal handler can wait for
//! them ([`Shutdown::settled`]).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gantry_actors::readiness::Readiness;

/// The shutdown flags and the count of admitted requests.
#[derive(Debug)]
pub struct Shutdown {
    draining: AtomicBool,
    refusing: AtomicBool,
    in_flight: AtomicUsize,
    /// How long requests are still served after the signal while readiness
    /// is 503 (`server.drain_delay_s`).
    delay: Duration,
    /// How long shutdown waits for them (`server.shutdown_timeout_s`).
    timeout: Duration,
    /// Told when draining begins (readiness turns 503).
    readiness: Readiness,
}

/// One admitted request; uncounted when dropped (answered or abandoned).
pub struct Admitted<'a>(&'a Shutdown);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shutdown {
    pub fn new(delay: Duration, timeout: Duration, readiness: Readiness) -> Shutdown {
        Shutdown {
            readiness,
            draining: AtomicBool::new(false),
            refusing: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            delay,
            timeout,
        }
    }

    /// Counts a request until the guard is dropped. Counted before the
    /// caller reads [`Shutdown::is_refusing`]: the signal handler sets the
    /// flag, then waits for the count, so no admitted request is missed.
    pub fn admit(&self) -> Admitted<'_> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Admitted(self)
    }

    /// Requests admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// The drain delay (`server.drain_delay_s`).
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Readiness turns 503; predictions are still served.
    pub fn begin_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.readiness.changed();
    }

    /// New requests are refused from now on.
    pub fn begin_refusing(&self) {
        self.refusing.store(true, Ordering::SeqCst);
        self.readiness.changed();
    }

    /// True from the signal on: readiness answers 503, whether or not new
    /// requests are still served.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed) || self.is_refusing()
    }

    /// True once the drain delay is over: new requests are refused.
    pub fn is_refusing(&self) -> bool {
        self.refusing.load(Ordering::Relaxed)
    }

    /// Waits until no admitted request is left, at most the shutdown
    /// timeout; true when none is left.
    pub async fn settled(&self) -> bool {
        let deadline = Instant::now() + self.timeout;
        while self.in_flight() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}
