//! Running DoGet streams by ticket id, so `CancelFlightInfo` can stop them. A cancel that
//! arrives before DoGet leaves a tombstone, and that DoGet then fails with CANCELLED.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

const TOMBSTONE_TTL: Duration = Duration::from_secs(600);

#[derive(Debug)]
enum Entry {
    Running(CancellationToken),
    Cancelled(Instant),
}

#[derive(Debug, Default)]
pub(crate) struct Cancellations {
    entries: Mutex<HashMap<String, Entry>>,
}

impl Cancellations {
    /// Registers a DoGet; `None` if the ticket was already cancelled.
    pub(crate) fn start(&self, id: &str) -> Option<CancellationToken> {
        let mut entries = self.entries.lock().ok()?;
        entries.retain(|_, e| !matches!(e, Entry::Cancelled(at) if at.elapsed() > TOMBSTONE_TTL));
        if matches!(entries.get(id), Some(Entry::Cancelled(_))) {
            return None;
        }
        let token = CancellationToken::new();
        entries.insert(id.to_string(), Entry::Running(token.clone()));
        Some(token)
    }

    pub(crate) fn finish(&self, id: &str) {
        if let Ok(mut entries) = self.entries.lock()
            && matches!(entries.get(id), Some(Entry::Running(_)))
        {
            entries.remove(id);
        }
    }

    /// Cancels a running DoGet or marks the ticket cancelled.
    pub(crate) fn cancel(&self, id: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            if let Some(Entry::Running(token)) = entries.get(id) {
                token.cancel();
            }
            entries.insert(id.to_string(), Entry::Cancelled(Instant::now()));
        }
    }
}
