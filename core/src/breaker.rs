//! A circuit breaker per upstream: after repeated failures the upstream is
//! skipped for a cool-down, so stale tags are served at once instead of after
//! a timeout per request, and a recovering upstream is tried again by one
//! probe at a time.
//!
//! # States
//!
//! * `Closed` — requests go through; consecutive failures are counted, and
//!   [`BreakerPolicy::threshold`] of them open the circuit.
//! * `Open` — requests are refused without contacting the upstream until the
//!   cool-down has passed.
//! * `HalfOpen` — one request (the probe) goes through; its success closes
//!   the circuit, its failure opens it for another cool-down. Other requests
//!   are refused meanwhile. A probe that never reports (its request was
//!   dropped) is replaced after one cool-down.
//!
//! # Key decisions
//!
//! * Only failures that say the upstream is unwell count: unreachable,
//!   timed out, `5xx`. A `404`, `401` or `429` is an upstream answering (and
//!   rate limits have their own back-off), so it counts as a success.
//! * Time is an argument (milliseconds on any monotonic clock): the core
//!   reads no clock, and the table tests run in no time.

/// When the circuit opens and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive failures that open the circuit (at least 1).
    pub threshold: u32,
    /// How long an open circuit refuses requests, in milliseconds.
    pub cool_down_ms: u64,
}

impl Default for BreakerPolicy {
    /// Five failures in a row open the circuit for 30 s: long enough that a
    /// herd of pulls against a dead upstream costs five timeouts, not one
    /// per pull; short enough that a recovered upstream is used again soon.
    fn default() -> Self {
        BreakerPolicy {
            threshold: 5,
            cool_down_ms: 30_000,
        }
    }
}

/// Where a circuit stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Requests go through; `failures` in a row so far.
    Closed {
        /// Consecutive failures.
        failures: u32,
    },
    /// Requests are refused until `until_ms`.
    Open {
        /// End of the cool-down.
        until_ms: u64,
    },
    /// One probe is out since `since_ms`.
    HalfOpen {
        /// When the probe was let through.
        since_ms: u64,
    },
}

impl State {
    /// The label of this state in metrics and `/readyz`.
    pub fn label(self) -> &'static str {
        match self {
            State::Closed { .. } => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half_open",
        }
    }
}

/// Whether a request may go to the upstream now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Yes.
    Yes,
    /// Yes, as the probe of a half-open circuit.
    Probe,
    /// No: the circuit is open (or a probe is out) for about this long.
    No {
        /// Milliseconds until a request may be tried again.
        retry_after_ms: u64,
    },
}

/// What a request's outcome did to the circuit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Nothing changed state.
    None,
    /// The circuit opened (from closed or half-open).
    Opened,
    /// The circuit closed after a successful probe.
    Closed,
}

/// One upstream's circuit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Breaker {
    policy: BreakerPolicy,
    state: State,
}

impl Breaker {
    /// A closed circuit under `policy`.
    pub fn new(policy: BreakerPolicy) -> Self {
        Breaker {
            policy: BreakerPolicy {
                threshold: policy.threshold.max(1),
                ..policy
            },
            state: State::Closed { failures: 0 },
        }
    }

    /// Where the circuit stands.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether a request may go out at `now_ms`.
    pub fn admit(&mut self, now_ms: u64) -> Admit {
        let cool_down = self.policy.cool_down_ms;
        match self.state {
            State::Closed { .. } => Admit::Yes,
            State::Open { until_ms } if now_ms < until_ms => Admit::No {
                retry_after_ms: until_ms - now_ms,
            },
            State::HalfOpen { since_ms } if now_ms < since_ms.saturating_add(cool_down) => {
                Admit::No {
                    retry_after_ms: since_ms.saturating_add(cool_down) - now_ms,
                }
            }
            // The cool-down is over, or the last probe never reported.
            State::Open { .. } | State::HalfOpen { .. } => {
                self.state = State::HalfOpen { since_ms: now_ms };
                Admit::Probe
            }
        }
    }

    /// Records a request's outcome at `now_ms` (`healthy`: the upstream
    /// answered, whatever the status, except `5xx`).
    pub fn record(&mut self, healthy: bool, now_ms: u64) -> Transition {
        let open = State::Open {
            until_ms: now_ms.saturating_add(self.policy.cool_down_ms),
        };
        match (self.state, healthy) {
            (State::HalfOpen { .. }, true) => {
                self.state = State::Closed { failures: 0 };
                Transition::Closed
            }
            (_, true) => {
                self.state = State::Closed { failures: 0 };
                Transition::None
            }
            (State::Closed { failures }, false) if failures + 1 < self.policy.threshold => {
                self.state = State::Closed {
                    failures: failures + 1,
                };
                Transition::None
            }
            (State::Closed { .. } | State::HalfOpen { .. }, false) => {
                self.state = open;
                Transition::Opened
            }
            // Requests admitted before the circuit opened report late:
            // the cool-down is not extended by them.
            (State::Open { .. }, false) => Transition::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerPolicy {
            threshold: 3,
            cool_down_ms: 1000,
        })
    }

    /// One step: at `t`, either ask (`Ask`, expecting an answer) or report
    /// (`Ok` / `Fail`, expecting a transition); then the state's label.
    #[derive(Clone)]
    enum Step {
        Ask(u64, Admit),
        Ok(u64, Transition),
        Fail(u64, Transition),
    }
    use Step::*;

    fn run(steps: &[(Step, &str)]) {
        let mut b = breaker();
        for (i, (step, label)) in steps.iter().enumerate() {
            match step {
                Ask(t, want) => assert_eq!(b.admit(*t), *want, "step {i}"),
                Ok(t, want) => assert_eq!(b.record(true, *t), *want, "step {i}"),
                Fail(t, want) => assert_eq!(b.record(false, *t), *want, "step {i}"),
            }
            assert_eq!(b.state().label(), *label, "step {i}");
        }
    }

    #[test]
    fn failures_in_a_row_open_the_circuit_and_a_success_resets_the_count() {
        run(&[
            (Ask(0, Admit::Yes), "closed"),
            (Fail(0, Transition::None), "closed"),
            (Fail(1, Transition::None), "closed"),
            (Ok(2, Transition::None), "closed"),
            (Fail(3, Transition::None), "closed"),
            (Fail(4, Transition::None), "closed"),
            (Fail(5, Transition::Opened), "open"),
            (
                Ask(
                    6,
                    Admit::No {
                        retry_after_ms: 999,
                    },
                ),
                "open",
            ),
            (Ask(1004, Admit::No { retry_after_ms: 1 }), "open"),
        ]);
    }

    #[test]
    fn after_the_cool_down_one_probe_decides() {
        let open = [
            (Fail(0, Transition::None), "closed"),
            (Fail(0, Transition::None), "closed"),
            (Fail(0, Transition::Opened), "open"),
        ];
        // A successful probe closes the circuit.
        let mut steps = open.to_vec();
        steps.extend([
            (Ask(1000, Admit::Probe), "half_open"),
            (
                Ask(
                    1001,
                    Admit::No {
                        retry_after_ms: 999,
                    },
                ),
                "half_open",
            ),
            (Ok(1200, Transition::Closed), "closed"),
            (Ask(1201, Admit::Yes), "closed"),
        ]);
        run(&steps);
        // A failed probe opens it for another cool-down.
        let mut steps = open.to_vec();
        steps.extend([
            (Ask(1000, Admit::Probe), "half_open"),
            (Fail(1500, Transition::Opened), "open"),
            (
                Ask(
                    2000,
                    Admit::No {
                        retry_after_ms: 500,
                    },
                ),
                "open",
            ),
            (Ask(2500, Admit::Probe), "half_open"),
        ]);
        run(&steps);
        // A probe that never reports is replaced after one cool-down.
        let mut steps = open.to_vec();
        steps.extend([
            (Ask(1000, Admit::Probe), "half_open"),
            (Ask(1999, Admit::No { retry_after_ms: 1 }), "half_open"),
            (Ask(2000, Admit::Probe), "half_open"),
        ]);
        run(&steps);
    }

    #[test]
    fn late_failures_do_not_extend_an_open_circuit() {
        run(&[
            (Fail(0, Transition::None), "closed"),
            (Fail(0, Transition::None), "closed"),
            (Fail(0, Transition::Opened), "open"),
            (Fail(900, Transition::None), "open"),
            (Ask(1000, Admit::Probe), "half_open"),
        ]);
    }

    #[test]
    fn a_zero_threshold_means_one_and_huge_times_saturate() {
        let mut b = Breaker::new(BreakerPolicy {
            threshold: 0,
            cool_down_ms: u64::MAX,
        });
        assert_eq!(b.record(false, u64::MAX - 1), Transition::Opened);
        assert_eq!(b.admit(u64::MAX - 1), Admit::No { retry_after_ms: 1 });
    }
}
