//! Type erasure: a registered [`Job`] becomes a handler the server calls by name.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::job::{Job, JobContext, JobError, StateType};

pub(crate) type JobFuture = Pin<Box<dyn Future<Output = Result<(), JobError>> + Send>>;

/// A job type the server can run, with its arguments still as JSON.
pub(crate) trait Handler: Send + Sync + 'static {
    /// Decodes the arguments and starts the job; a decoding error says which job and field.
    fn start(&self, ctx: JobContext, args: &str) -> Result<JobFuture, String>;

    /// The application state the job needs.
    fn required_state(&self) -> Vec<StateType>;

    /// Whether stored arguments still decode into the job's argument type.
    fn check_args(&self, args: &str) -> Result<(), String>;
}

pub(crate) struct TypedHandler<J: Job>(pub(crate) Arc<J>);

impl<J: Job> Handler for TypedHandler<J> {
    fn start(&self, ctx: JobContext, args: &str) -> Result<JobFuture, String> {
        let args = decode::<J>(args)?;
        let job = Arc::clone(&self.0);
        Ok(Box::pin(async move { job.run(ctx, args).await }))
    }

    fn required_state(&self) -> Vec<StateType> {
        J::required_state()
    }

    fn check_args(&self, args: &str) -> Result<(), String> {
        decode::<J>(args).map(drop)
    }
}

/// Decodes stored arguments; the error names the job and the path of the field.
fn decode<J: Job>(args: &str) -> Result<J::Args, String> {
    let mut de = serde_json::Deserializer::from_str(args);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let at = if path == "." || path.is_empty() {
            String::new()
        } else {
            format!(" at `{path}`")
        };
        format!(
            "the stored arguments of job `{}` no longer match its argument type{at}: {inner}; \
                 fix the code or the arguments, then requeue the job",
            J::NAME
        )
    })
}
