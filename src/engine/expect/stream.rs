//! A model's output judged on its way to the write: each batch through the [`Judge`] as
//! the writer pulls it, so a run holds one batch at a time (and its quarantined rows, at
//! most the cap) whatever its size.
//!
//! The end of the stream waits for [`Finish`], which the caller runs alongside the write:
//! it decides refusals and commits the quarantine, and only then does the stream end and
//! the writer commit the target, in that order (see the module docs of `expect`). A
//! refusal or a failed quarantine commit fails the stream, and with it the write before
//! its commit: nothing is committed, only unreferenced files are left (VACUUM removes
//! them).

use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::oneshot;

use super::{BatchQuality, Judge};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::pipelines::commit::Progress;
use crate::security::{AccessControl, Principal};
use crate::storage::TableRef;

type Reply = oneshot::Sender<Result<()>>;

/// `rows` (the output's columns, then one boolean per rule) judged by `judge`: the rows
/// left for the target, then, at its end, a wait for [`Finish::run`].
pub(in crate::engine) fn judged(
    judge: Judge,
    rows: BoxStream<'static, Result<RecordBatch>>,
) -> (BoxStream<'static, Result<RecordBatch>>, Finish) {
    let judge = Arc::new(Mutex::new(Some(judge)));
    let (ended, end) = oneshot::channel::<Reply>();
    let each = {
        let judge = Arc::clone(&judge);
        move |b: RecordBatch| {
            let mut slot = judge
                .lock()
                .map_err(|_| Error::internal("a model's judge was poisoned"))?;
            match slot.as_mut() {
                Some(j) => j.batch(b),
                None => Err(Error::internal(
                    "a model's rows came after its judging ended",
                )),
            }
        }
    };
    let last = futures::stream::once(async move {
        let (reply, answer) = oneshot::channel();
        if ended.send(reply).is_err() {
            return Some(Err(Error::internal("a model's judging was not finished")));
        }
        match answer.await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(Err(e)),
            Err(_) => Some(Err(Error::internal("a model's judging was not finished"))),
        }
    })
    .filter_map(std::future::ready);
    let stream = rows
        .and_then(move |b| std::future::ready(each(b)))
        .chain(last)
        .boxed();
    (stream, Finish { judge, end })
}

/// The end of a judged stream's judging (see [`judged`]).
#[derive(Debug)]
pub(in crate::engine) struct Finish {
    judge: Arc<Mutex<Option<Judge>>>,
    end: oneshot::Receiver<Reply>,
}

impl Finish {
    /// Waits for the stream's end, then refuses or commits the quarantine and lets the
    /// stream end (or fail). What the judging came to; `None` when the stream never reached
    /// its end (the write failed first, with its own error).
    pub(in crate::engine) async fn run(
        self,
        engine: &Engine,
        principal: &Arc<Principal>,
        access: &Arc<AccessControl>,
        t: &TableRef,
        progress: &Progress,
    ) -> Option<BatchQuality> {
        let reply = self.end.await.ok()?;
        let judge = self.judge.lock().ok().and_then(|mut j| j.take());
        let Some(judge) = judge else {
            let _ = reply.send(Err(Error::internal("a model's judge was lost")));
            return None;
        };
        match engine
            .finish_judging(principal, access, judge, t, progress)
            .await
        {
            Ok(quality) => {
                let answer = match &quality.refused {
                    Some(why) => Err(Error::invalid(why.clone())),
                    None => Ok(()),
                };
                let _ = reply.send(answer);
                Some(quality)
            }
            Err(e) => {
                // The stream fails with it; the write reports it.
                let _ = reply.send(Err(e));
                None
            }
        }
    }
}
