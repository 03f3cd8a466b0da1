//! The vhost-user virtio-fs device (issue 5: in progress).
