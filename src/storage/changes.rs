//! Whether a table's change data feed between two versions can still be read.
//!
//! The feed of a version is its change files (`cdc` actions) or, without any, the data files
//! it added and removed. VACUUM deletes files the current snapshot no longer references, and
//! log cleanup deletes old commits: either makes a range unreadable. Reading such a range
//! would fail half-way through a streamed result (or, worse, skip rows), so readers check
//! first and get one clear conflict.

use deltalake::DeltaTable;
use deltalake::kernel::Action;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::path::Path;

use crate::error::{Error, Result};
use crate::storage::TableRef;

/// The columns the change data feed adds to a table's rows.
pub(crate) const CHANGE_COLUMNS: [&str; 3] =
    ["_change_type", "_commit_version", "_commit_timestamp"];

/// Files checked concurrently.
const CONCURRENCY: usize = 16;

/// `Ok` when every commit of `from..=to` is in the log and every file its changes are read
/// from exists; otherwise [`Error::Conflict`] naming what is gone.
pub(crate) async fn check_available(
    table: &DeltaTable,
    t: &TableRef,
    from: u64,
    to: u64,
) -> Result<()> {
    let log = table.log_store();
    let mut files = Vec::new();
    for v in from..=to {
        let Some(bytes) = log.read_commit_entry(v).await? else {
            return Err(Error::Conflict(format!(
                "the changes of {t} at version {v} are no longer available: the commit left the log (log retention); read from a later version or rebuild from the current snapshot"
            )));
        };
        let actions = deltalake::logstore::get_actions(v, &bytes)?;
        let cdc: Vec<&str> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Cdc(c) => Some(c.path.as_str()),
                _ => None,
            })
            .collect();
        if cdc.is_empty() {
            files.extend(actions.iter().filter_map(|a| match a {
                Action::Add(a) if a.data_change => Some(a.path.clone()),
                Action::Remove(r) if r.data_change => Some(r.path.clone()),
                _ => None,
            }));
        } else {
            files.extend(cdc.into_iter().map(str::to_string));
        }
    }
    let store = table.object_store();
    futures::stream::iter(files)
        .map(|f| {
            let store = std::sync::Arc::clone(&store);
            async move {
                let path = Path::from_url_path(&f).unwrap_or_else(|_| Path::from(f.as_str()));
                match store.head(&path).await {
                    Ok(_) => Ok(()),
                    Err(object_store::Error::NotFound { .. }) => Err(Error::Conflict(format!(
                        "the changes of {t} between versions {from} and {to} are no longer available: {f} was removed (VACUUM); read from a later version or rebuild from the current snapshot"
                    ))),
                    Err(e) => Err(e.into()),
                }
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}
