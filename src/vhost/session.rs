//! The FUSE session a guest holds on the device's filesystem: started by FUSE_INIT, ended by
//! DESTROY, a second INIT, or the VMM going away.
//!
//! The kernel sends FUSE_INIT first and waits for its answer before anything else; a request
//! before it is a protocol violation and gets `EIO` (FORGET, BATCH_FORGET, INTERRUPT and
//! NOTIFY_REPLY have no answer and are dropped). When a session ends, the filesystem's
//! [`destroy`](crate::FileSystem::destroy) releases every inode lookup and handle the guest
//! held, as an unmount would, so the next session (a rebooted guest, a reconnected VMM, or a
//! guest that sends INIT again) starts clean and node ids and handles of the previous one no
//! longer work.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::DynFileSystem;

/// Session state shared by every queue and worker of a device.
pub(crate) struct Session {
    fs: Arc<dyn DynFileSystem>,
    /// INIT was answered successfully and the session has not ended since.
    initialized: AtomicBool,
    /// The filesystem was initialised since it was last destroyed, so it may hold a guest's
    /// lookups and handles.
    dirty: AtomicBool,
    /// Serialises INIT, DESTROY, [`Session::end`] and device-state transfers.
    lock: Mutex<()>,
    /// What the guest's INIT offered, for a device-state snapshot.
    init: Mutex<Option<InitParams>>,
    /// A device-state load is under way or failed: every request is refused until the VMM
    /// disconnects.
    unusable: AtomicBool,
}

/// The parameters of a guest's FUSE_INIT that a restored session replays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct InitParams {
    pub(crate) major: u32,
    pub(crate) minor: u32,
    pub(crate) max_readahead: u32,
    /// `flags | flags2 << 32` as the guest offered them.
    pub(crate) capable: u64,
}

/// What an INIT or DESTROY holds while the server serves it.
pub(crate) struct Transition<'a> {
    session: &'a Session,
    _guard: parking_lot::MutexGuard<'a, ()>,
}

impl Session {
    /// A session that waits for INIT; `initialized` starts it as if INIT had been answered
    /// (the fuzzing harness).
    pub(crate) fn new(fs: Arc<dyn DynFileSystem>, initialized: bool) -> Session {
        Session {
            fs,
            initialized: AtomicBool::new(initialized),
            dirty: AtomicBool::new(initialized),
            lock: Mutex::new(()),
            init: Mutex::new(None),
            unusable: AtomicBool::new(false),
        }
    }

    /// The filesystem the session runs on.
    pub(crate) fn fs(&self) -> &Arc<dyn DynFileSystem> {
        &self.fs
    }

    /// Holds off INIT, DESTROY and the end of the session (a state transfer runs).
    pub(crate) fn lock_transitions(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.lock.lock()
    }

    /// The INIT parameters of the current session.
    pub(crate) fn init_params(&self) -> Option<InitParams> {
        *self.init.lock()
    }

    /// Refuses every request (INIT included) until the VMM disconnects.
    pub(crate) fn poison(&self) {
        self.dirty.store(true, Ordering::Release);
        self.unusable.store(true, Ordering::Release);
    }

    /// Whether the device refuses every request (a failed device-state load).
    pub(crate) fn unusable(&self) -> bool {
        self.unusable.load(Ordering::Acquire)
    }

    /// A device state was loaded: the session is `init`'s (initialised if `Some`), served
    /// without a new INIT. `_guard` is [`lock_transitions`](Self::lock_transitions)'s.
    pub(crate) fn restore_locked(
        &self,
        _guard: &parking_lot::MutexGuard<'_, ()>,
        init: Option<InitParams>,
    ) {
        *self.init.lock() = init;
        self.dirty.store(true, Ordering::Release);
        self.initialized.store(init.is_some(), Ordering::Release);
        self.unusable.store(false, Ordering::Release);
    }

    /// Whether INIT was answered and the session has not ended since.
    pub(crate) fn initialized(&self) -> bool {
        self.initialized.load(Ordering::Acquire)
    }

    /// Ends the session (the VMM disconnected): the filesystem forgets everything the guest
    /// held, and the next requests wait for a new INIT.
    pub(crate) fn end(&self) {
        let _guard = self.lock.lock();
        self.end_locked();
        self.unusable.store(false, Ordering::Release);
    }

    fn end_locked(&self) {
        self.initialized.store(false, Ordering::Release);
        if self.dirty.swap(false, Ordering::AcqRel) {
            tracing::debug!("FUSE session ended; releasing its inodes and handles");
            let fs = &self.fs;
            if catch_unwind(AssertUnwindSafe(|| fs.destroy())).is_err() {
                tracing::error!("filesystem panicked in destroy");
            }
        }
    }

    /// Starts serving an INIT: a session already in place ends first (as a fresh mount would
    /// find it).
    pub(crate) fn begin_init(&self) -> Transition<'_> {
        let guard = self.lock.lock();
        self.end_locked();
        Transition {
            session: self,
            _guard: guard,
        }
    }

    /// Starts serving a DESTROY (the server itself calls the filesystem's `destroy`).
    pub(crate) fn begin_destroy(&self) -> Transition<'_> {
        Transition {
            session: self,
            _guard: self.lock.lock(),
        }
    }
}

impl Transition<'_> {
    /// The INIT was served: `fs_init` whether the filesystem's `init` ran (a supported major
    /// version), `accepted` whether the guest got a successful answer.
    pub(crate) fn init_done(self, fs_init: bool, accepted: bool, params: Option<InitParams>) {
        *self.session.init.lock() = if fs_init && accepted { params } else { None };
        if fs_init {
            self.session.dirty.store(true, Ordering::Release);
        }
        self.session
            .initialized
            .store(fs_init && accepted, Ordering::Release);
    }

    /// The DESTROY was served: the filesystem has dropped the session's state.
    pub(crate) fn destroy_done(self) {
        self.session.dirty.store(false, Ordering::Release);
        self.session.initialized.store(false, Ordering::Release);
    }
}
