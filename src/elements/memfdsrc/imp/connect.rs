// SPDX-License-Identifier: MPL-2.0
//! `memfdsrc`'s connection to its producer: connecting (never waiting on the producer),
//! reconnecting with a back-off, trying again a producer that hangs up at once.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::transport::client::{Connection, Registry};
use crate::transport::closer;
use crate::transport::socket;
use crate::transport::wire as proto;
use gst::subclass::prelude::*;

use super::{CAT, Link, MemfdSrc, RECONNECT_MAX_DELAY};

/// Why [`MemfdSrc::connect`] failed: `Greeting` when connected but the hello could not be
/// sent (a producer that took the connection and closed it at once, as one does for a
/// consumer of a user it penalizes): with `reconnect`, tried again after the back-off.
pub(super) enum ConnectError {
    Failed(String),
    Greeting(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Failed(e) | ConnectError::Greeting(e) => f.write_str(e),
        }
    }
}

impl MemfdSrc {
    /// Connects at start: a producer that hangs up at once (one refusing this user for a
    /// while) is tried again until `timeout`, as one that is not there yet.
    pub(super) fn connect_at_start(&self) -> Result<(), gst::ErrorMessage> {
        let timeout = Duration::from_millis(self.settings.lock().unwrap().timeout_ms as u64);
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match self.connect() {
                Ok(()) => return Ok(()),
                Err(ConnectError::Greeting(e)) if std::time::Instant::now() < deadline => {
                    gst::debug!(CAT, imp = self, "the producer hung up at once: {}", e);
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    return Err(gst::error_msg!(
                        gst::ResourceError::OpenRead,
                        ("Cannot connect: {}", e)
                    ));
                }
            }
        }
    }

    /// Connects (again): a new connection, an empty registry.
    pub(super) fn connect(&self) -> Result<(), ConnectError> {
        let settings = self.settings.lock().unwrap().clone();
        let Some(path) = settings.socket_path else {
            return Err(ConnectError::Failed("memfdsrc needs socket-path".into()));
        };
        *self.link.lock().unwrap() = None;
        let sock = socket::connect(
            &PathBuf::from(&path),
            Duration::from_millis(settings.timeout_ms as u64),
            || self.flushing.load(Ordering::Relaxed),
        )
        .map_err(ConnectError::Failed)?;
        gst::info!(CAT, imp = self, "connected to {}", path);
        *self.link.lock().unwrap() = Some(Link {
            conn: Connection::new(sock, settings.max_blocks).map_err(ConnectError::Greeting)?,
            registry: Registry::new(settings.max_blocks as usize),
            packet: vec![0; proto::MAX_MESSAGE],
            busy: false,
        });
        self.stats.lock().unwrap().blocks_mapped = 0;
        Ok(())
    }

    /// The producer went away: an error, or (`reconnect`) a new connection.
    pub(super) fn reconnect(&self) -> Result<(), gst::FlowError> {
        if !self.settings.lock().unwrap().reconnect {
            return Err(self.fail(&format!(
                "The producer at {} went away (connection closed)",
                self.path()
            )));
        }
        loop {
            self.back_off()?;
            match self.connect() {
                Ok(()) => break,
                Err(ConnectError::Greeting(e)) => {
                    gst::warning!(CAT, imp = self, "the producer hung up at once: {}", e);
                }
                Err(e) => return Err(self.fail(&format!("Cannot reconnect: {e}"))),
            }
        }
        self.stats.lock().unwrap().reconnects += 1;
        Ok(())
    }

    /// Waits before a reconnection: a producer that accepts and hangs up at once must not
    /// make us spin. The delay doubles up to RECONNECT_MAX_DELAY and is reset by the next
    /// buffer.
    fn back_off(&self) -> Result<(), gst::FlowError> {
        let delay = {
            let mut backoff = self.backoff.lock().unwrap();
            let delay = *backoff;
            *backoff = (delay * 2).min(RECONNECT_MAX_DELAY);
            delay
        };
        gst::warning!(
            CAT,
            imp = self,
            "producer went away: reconnecting in {} ms",
            delay.as_millis()
        );
        // Nor while what producers sent waits to be closed beyond the closer's backlog (a
        // producer whose descriptors block every closer thread): each connection could hand it
        // more.
        let until = std::time::Instant::now() + delay;
        let mut said = false;
        while std::time::Instant::now() < until || closer::saturated() {
            if self.flushing.load(Ordering::Relaxed) {
                return Err(gst::FlowError::Flushing);
            }
            if !said && closer::saturated() {
                gst::warning!(
                    CAT,
                    imp = self,
                    "{} descriptors producers sent wait to be closed: \
                     not reconnecting until fewer do",
                    closer::pending()
                );
                said = true;
            }
            std::thread::sleep(Duration::from_millis(10).min(delay));
        }
        Ok(())
    }
}
