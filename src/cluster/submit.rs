//! The front end's side: a finished physical plan submitted to the scheduler (Ballista's
//! physical-plan submission: the scheduler never re-plans, so no user predicate is pushed
//! below a policy again), its job followed to the end, its result partitions streamed back
//! from the executors into the query's output.
//!
//! The job lives exactly as long as the stream reading it: dropping the stream (the client
//! went away, the query's deadline) cancels the job on the scheduler.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use ballista_core::client::BallistaClient;
use ballista_core::serde::protobuf::execute_query_params::Query;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::protobuf::{
    CancelJobParams, ExecuteQueryParams, GetJobStatusParams, KeyValuePair, PartitionLocation,
    SuccessfulJob, execute_query_result, job_status,
};
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::SessionConfig;
use datafusion_proto::physical_plan::AsExecutionPlan;
use datafusion_proto::protobuf::PhysicalPlanNode;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tonic::transport::Channel;

use super::codec::StrataCodec;
use super::transport::{MAX_MESSAGE, Transport};
use crate::error::{Error, Result};

/// A connection to the scheduler.
#[derive(Debug, Clone)]
pub(crate) struct Scheduler {
    url: String,
    channel: Channel,
    client: SchedulerGrpcClient<Channel>,
    transport: Arc<Transport>,
}

impl Scheduler {
    pub(crate) fn new(url: &str, transport: Transport) -> Result<Scheduler> {
        let endpoint = Channel::from_shared(url.to_string())
            .map_err(|e| Error::Config(format!("cluster.scheduler_url: {e}")))?
            .connect_timeout(Duration::from_secs(5));
        let channel = transport.endpoint(endpoint)?.connect_lazy();
        Ok(Scheduler {
            url: url.trim_end_matches('/').to_string(),
            client: SchedulerGrpcClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            channel,
            transport: Arc::new(transport),
        })
    }

    /// Fails unless the scheduler counts an executor alive (its `/readyz`, asked over the
    /// same connection as its gRPC, so under the same TLS).
    async fn require_executors(&self) -> Result<()> {
        use tower::ServiceExt;
        let unavailable = |e: String| {
            Error::ClusterUnavailable(format!(
                "the cluster's scheduler at {} does not answer: {e}",
                self.url
            ))
        };
        let request = http::Request::get("/readyz")
            .body(tonic::body::Body::empty())
            .map_err(|e| Error::internal(e.to_string()))?;
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            self.channel.clone().oneshot(request),
        )
        .await
        .map_err(|_| unavailable("no answer within 5 s".to_string()))?
        .map_err(|e| unavailable(e.to_string()))?;
        match answer.status() {
            http::StatusCode::OK => Ok(()),
            http::StatusCode::SERVICE_UNAVAILABLE => Err(Error::ClusterUnavailable(
                "the cluster has no live executor to run the query; run it on this node with the header x-strata-distributed: off".to_string(),
            )),
            other => Err(unavailable(format!("its readiness answered {other}"))),
        }
    }

    /// Runs `plan` on the cluster: its rows as a stream, the job cancelled when the stream
    /// is dropped before its end.
    pub(crate) async fn execute(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        codec: &StrataCodec,
        config: &SessionConfig,
    ) -> Result<SendableRecordBatchStream> {
        self.require_executors().await?;
        let schema = plan.schema();
        let bytes = PhysicalPlanNode::try_from_physical_plan(plan, codec)?.encode_to_vec();
        let settings = config
            .options()
            .entries()
            .into_iter()
            .filter(|e| e.key.starts_with("datafusion."))
            .filter_map(|e| {
                e.value.map(|value| KeyValuePair {
                    key: e.key,
                    value: Some(value),
                })
            })
            .collect();
        let session_id = uuid::Uuid::now_v7().to_string();
        let mut request = tonic::Request::new(ExecuteQueryParams {
            query: Some(Query::PhysicalPlan(bytes)),
            settings,
            session_id,
            operation_id: uuid::Uuid::now_v7().to_string(),
        });
        ballista_core::version::insert_version_header(request.metadata_mut());
        let mut client = self.client.clone();
        let result = client
            .execute_query(request)
            .await
            .map_err(|s| self.grpc_error(s))?
            .into_inner()
            .result
            .ok_or_else(|| Error::internal("the scheduler answered without a result"))?;
        let job_id = match result {
            execute_query_result::Result::Success(s) => s.job_id,
            execute_query_result::Result::Failure(f) => {
                return Err(Error::internal(format!(
                    "the scheduler refused the plan: {:?}",
                    f.failure
                )));
            }
        };
        tracing::info!(job_id, "query submitted to the cluster");
        let job = Job {
            scheduler: self.clone(),
            id: job_id,
            finished: false,
        };
        let stream = futures::stream::once(job.run()).try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }

    fn grpc_error(&self, s: tonic::Status) -> Error {
        Error::ClusterUnavailable(format!(
            "the cluster's scheduler at {}: {}",
            self.url,
            s.message()
        ))
    }
}

/// One submitted job; cancelled on drop unless it ended.
#[derive(Debug)]
struct Job {
    scheduler: Scheduler,
    id: String,
    finished: bool,
}

impl Job {
    /// Waits for the job, then streams its result partitions (the job is cancelled if the
    /// stream is dropped before).
    async fn run(mut self) -> DfResult<impl Stream<Item = DfResult<RecordBatch>> + Send + 'static> {
        let locations = self.wait().await.map_err(DataFusionError::from)?;
        // From here the job is done: nothing to cancel when the reader stops early.
        self.finished = true;
        let transport = Arc::clone(&self.scheduler.transport);
        let streams = locations
            .into_iter()
            .map(move |l| futures::stream::once(fetch(l, Arc::clone(&transport))).try_flatten());
        Ok(futures::stream::iter(streams).flatten())
    }

    async fn wait(&mut self) -> Result<Vec<PartitionLocation>> {
        let mut client = self.scheduler.client.clone();
        let mut pause = Duration::from_millis(10);
        let mut last_check = tokio::time::Instant::now();
        loop {
            let status = client
                .get_job_status(GetJobStatusParams {
                    job_id: self.id.clone(),
                })
                .await
                .map_err(|s| self.scheduler.grpc_error(s))?
                .into_inner()
                .status
                .and_then(|s| s.status);
            match status {
                Some(job_status::Status::Successful(SuccessfulJob {
                    partition_location, ..
                })) => return Ok(partition_location),
                Some(job_status::Status::Failed(f)) => {
                    self.finished = true;
                    return Err(job_failed(&self.id, &f.error));
                }
                _ => {}
            }
            // A job waiting for executors that are gone would wait forever.
            if last_check.elapsed() > Duration::from_secs(1) {
                self.scheduler.require_executors().await?;
                last_check = tokio::time::Instant::now();
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let (mut client, job_id) = (self.scheduler.client.clone(), self.id.clone());
        tracing::info!(job_id, "cancelling the cluster job: its reader is gone");
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = client.cancel_job(CancelJobParams { job_id }).await {
                    tracing::warn!(error = %e.message(), "cancelling a cluster job failed");
                }
            });
        }
    }
}

/// A job's failure as the client sees it: the executor's error, which names the refused
/// or failed part (a policy evaluation error stays as general as it was).
fn job_failed(id: &str, error: &str) -> Error {
    Error::DataFusion(Box::new(DataFusionError::Execution(format!(
        "the cluster job {id} failed: {error}"
    ))))
}

async fn fetch(
    location: PartitionLocation,
    transport: Arc<Transport>,
) -> DfResult<SendableRecordBatchStream> {
    let layout = location.layout();
    let (Some(meta), Some(partition)) = (location.executor_meta, location.partition_id) else {
        return Err(DataFusionError::Internal(
            "the scheduler sent a result partition without its executor".into(),
        ));
    };
    let mut client = BallistaClient::try_new(
        &meta.host,
        meta.port as u16,
        MAX_MESSAGE,
        transport.uses_tls(),
        Some(transport.endpoint_extension()),
        3,
        100,
        0,
        0,
    )
    .await
    .map_err(|e| DataFusionError::Execution(format!("executor {}: {e}", meta.id)))?;
    client
        .fetch_partition(&meta.id, &partition.into(), location.file_id, layout, true)
        .await
        .map_err(|e| e.into_datafusion())
}
