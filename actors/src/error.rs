//! Errors of the engine that a caller can act on.
//!
//! Each variant is a condition, not a message: the HTTP layer maps each one to a single status
//! and a stable code, and never shows internals. Failures inside a job end up in its record
//! as a [`crate::job::JobFailure`] instead.

use std::time::Duration;

use crate::bulkhead::BulkheadError;

/// Why a job was not accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubmitError {
    #[error("the service is in maintenance mode and accepts no new jobs")]
    Maintenance,
    #[error("the service is shutting down and accepts no new jobs")]
    ShuttingDown,
    #[error("too many jobs in progress ({in_progress}); retry later")]
    Overloaded { in_progress: usize, retry_after: Duration },
}

/// Why a stage of a job did not produce its output.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Rejected(#[from] BulkheadError),
    #[error("the {service} worker stopped before answering")]
    WorkerLost { service: String },
    #[error("the {service} worker panicked while handling the job")]
    Panicked { service: String },
    #[error("{0}")]
    Failed(String),
}

impl From<crate::supervisor::DispatchError> for StageError {
    fn from(err: crate::supervisor::DispatchError) -> Self {
        match err {
            crate::supervisor::DispatchError::Bulkhead(e) => StageError::Rejected(e),
            crate::supervisor::DispatchError::WorkerLost { service } => {
                StageError::WorkerLost { service }
            }
        }
    }
}
