//! `boxfsd`: the boxfs vhost-user virtio-fs daemon.
fn main() {}
