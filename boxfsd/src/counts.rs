//! Request counts of the single-device daemon: on every SIGUSR2 it logs (info level, on
//! stderr) the requests served so far by FUSE opcode, as one line
//! `request counts: total=N LOOKUP=N GETATTR=N ... served_us=N` (names from `metrics`;
//! numbers for opcodes without one; `served_us`: the summed time from taking each request to
//! having its reply written, in microseconds). `scripts/bench-workloads.sh` sends it between the guest's steps to
//! count each step's round trips. Fleet mode serves the same counters on `GET /metrics`.

use std::sync::{Arc, OnceLock};

use boxfs::vhost::RequestMetrics;

/// The counters of the device, set once it is built.
static COUNTS: OnceLock<Arc<RequestMetrics>> = OnceLock::new();

/// The counters to hand to the device builder.
pub(crate) fn counters() -> Arc<RequestMetrics> {
    Arc::clone(COUNTS.get_or_init(|| Arc::new(RequestMetrics::new())))
}

/// The log line for the counters.
pub(crate) fn line(m: &RequestMetrics) -> String {
    let by_op = m.requests_by_opcode();
    let total: u64 = by_op.iter().map(|(_, n)| n).sum();
    let served_us = (m.latency().sum_seconds * 1e6) as u64;
    let mut s = format!("request counts: total={total}");
    for (op, n) in by_op {
        s.push_str(&format!(" {}={n}", crate::metrics::opcode_name(op)));
    }
    s.push_str(&format!(" served_us={served_us}"));
    s
}

/// Registers the SIGUSR2 handler; call before the sandbox's seccomp filter.
pub(crate) fn signals() -> Option<signal_hook::iterator::Signals> {
    match signal_hook::iterator::Signals::new([signal_hook::consts::SIGUSR2]) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("cannot install the SIGUSR2 handler: {e}");
            None
        }
    }
}

/// Logs the counters on every SIGUSR2, on a thread of its own.
pub(crate) fn serve_signals(signals: Option<signal_hook::iterator::Signals>) {
    let Some(mut signals) = signals else { return };
    let spawned = std::thread::Builder::new()
        .name("boxfsd-counts".into())
        .spawn(move || {
            for _ in signals.forever() {
                tracing::info!("{}", line(&counters()));
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the request-count thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_names_opcodes_and_sums_them() {
        let m = RequestMetrics::new();
        assert_eq!(line(&m), "request counts: total=0 served_us=0");
    }
}
