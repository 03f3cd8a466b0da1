//! `GET /metrics`: the devices' counters in the Prometheus (OpenMetrics) text format, encoded
//! by `prometheus-client` from a collector that reads the devices' atomics at scrape time.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry as PromRegistry;

use crate::devices::{Device, Registry};

/// Content type of the answer.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// FUSE opcode names (include/uapi/linux/fuse.h), by number.
pub(crate) fn opcode_name(op: u32) -> std::borrow::Cow<'static, str> {
    const NAMES: [&str; 53] = [
        "UNKNOWN",
        "LOOKUP",
        "FORGET",
        "GETATTR",
        "SETATTR",
        "READLINK",
        "SYMLINK",
        "7",
        "MKNOD",
        "MKDIR",
        "UNLINK",
        "RMDIR",
        "RENAME",
        "LINK",
        "OPEN",
        "READ",
        "WRITE",
        "STATFS",
        "RELEASE",
        "19",
        "FSYNC",
        "SETXATTR",
        "GETXATTR",
        "LISTXATTR",
        "REMOVEXATTR",
        "FLUSH",
        "INIT",
        "OPENDIR",
        "READDIR",
        "RELEASEDIR",
        "FSYNCDIR",
        "GETLK",
        "SETLK",
        "SETLKW",
        "ACCESS",
        "CREATE",
        "INTERRUPT",
        "BMAP",
        "DESTROY",
        "IOCTL",
        "POLL",
        "NOTIFY_REPLY",
        "BATCH_FORGET",
        "FALLOCATE",
        "READDIRPLUS",
        "RENAME2",
        "LSEEK",
        "COPY_FILE_RANGE",
        "SETUPMAPPING",
        "REMOVEMAPPING",
        "SYNCFS",
        "TMPFILE",
        "STATX",
    ];
    match NAMES.get(op as usize) {
        Some(n) => (*n).into(),
        None => op.to_string().into(),
    }
}

/// Reads every device's counters on each scrape.
#[derive(Clone)]
struct Devices(Arc<Registry>);

impl std::fmt::Debug for Devices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Devices")
    }
}

type Labels = Vec<(&'static str, String)>;

fn dev_labels(d: &Device) -> Labels {
    vec![("device", d.spec.id.clone())]
}

/// Emits one metric family: `values` gives each device's labelled samples.
fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: Vec<(Labels, M)>,
) -> Result<(), std::fmt::Error> {
    if samples.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        value.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Devices {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let devices = self.0.list();
        let g = ConstGauge::new(devices.len() as i64);
        g.encode(enc.encode_descriptor(
            "boxfs_devices",
            "Devices served",
            None,
            g.metric_type(),
        )?)?;

        let counter = |f: &dyn Fn(&Device) -> u64| -> Vec<(Labels, ConstCounter<u64>)> {
            devices
                .iter()
                .map(|d| (dev_labels(d), ConstCounter::new(f(d))))
                .collect()
        };
        let mut by_op = Vec::new();
        let mut by_errno = Vec::new();
        for d in &devices {
            for (op, n) in d.metrics.requests_by_opcode() {
                let mut l = dev_labels(d);
                l.push(("opcode", opcode_name(op).into_owned()));
                by_op.push((l, ConstCounter::new(n)));
            }
            for (errno, n) in d.metrics.errors_by_errno() {
                let mut l = dev_labels(d);
                l.push(("errno", errno.to_string()));
                by_errno.push((l, ConstCounter::new(n)));
            }
        }
        family(
            &mut enc,
            "boxfs_requests",
            "Requests served, by FUSE opcode",
            MetricType::Counter,
            by_op,
        )?;
        family(
            &mut enc,
            "boxfs_errors",
            "Error replies, by errno",
            MetricType::Counter,
            by_errno,
        )?;
        family(
            &mut enc,
            "boxfs_read_bytes",
            "Bytes read by the guest",
            MetricType::Counter,
            counter(&|d| d.metrics.bytes_read()),
        )?;
        family(
            &mut enc,
            "boxfs_written_bytes",
            "Bytes written by the guest",
            MetricType::Counter,
            counter(&|d| d.metrics.bytes_written()),
        )?;
        family(
            &mut enc,
            "boxfs_connections",
            "VMM connections accepted",
            MetricType::Counter,
            counter(&|d| d.handle.stats().connections),
        )?;
        family(
            &mut enc,
            "boxfs_dropped_chains",
            "Descriptor chains returned unanswered",
            MetricType::Counter,
            counter(&|d| d.handle.stats().dropped),
        )?;

        if !devices.is_empty() {
            let mut m = enc.encode_descriptor(
                "boxfs_request_duration_seconds",
                "Request latency, from taking the chain to writing its reply",
                None,
                MetricType::Histogram,
            )?;
            for d in &devices {
                let l = dev_labels(d);
                let h = d.metrics.latency();
                m.encode_family(&l)?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        h.sum_seconds,
                        h.count,
                        &h.buckets,
                        None,
                    )?;
            }
        }

        let usage: Vec<(Labels, crate::devices::Usage)> = devices
            .iter()
            .map(|d| (dev_labels(d), (d.usage)()))
            .collect();
        let gauge =
            |f: &dyn Fn(&crate::devices::Usage) -> Option<u64>| -> Vec<(Labels, ConstGauge<i64>)> {
                usage
                    .iter()
                    .filter_map(|(l, u)| {
                        f(u).map(|v| {
                            (
                                l.clone(),
                                ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)),
                            )
                        })
                    })
                    .collect()
            };
        family(
            &mut enc,
            "boxfs_inodes",
            "Inodes held (host directory) or stored (MemFs)",
            MetricType::Gauge,
            gauge(&|u| u.inodes),
        )?;
        family(
            &mut enc,
            "boxfs_open_handles",
            "Files and directories open",
            MetricType::Gauge,
            gauge(&|u| u.open_handles),
        )?;
        family(
            &mut enc,
            "boxfs_memfs_bytes",
            "Bytes an in-memory filesystem holds",
            MetricType::Gauge,
            gauge(&|u| u.memfs_bytes),
        )?;
        family(
            &mut enc,
            "boxfs_quota_bytes",
            "Bytes charged against the quota",
            MetricType::Gauge,
            gauge(&|u| u.quota_bytes),
        )?;
        Ok(())
    }
}

/// The text of `GET /metrics`.
pub(crate) fn render(devices: &Arc<Registry>) -> Result<String, String> {
    let mut reg = PromRegistry::default();
    reg.register_collector(Box::new(Devices(Arc::clone(devices))));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg).map_err(|e| e.to_string())?;
    Ok(out)
}
