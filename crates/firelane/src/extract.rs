//! What a `#[job]` function's parameters and result go through: [`State`] and the other
//! values taken from the running job ([`FromContext`]), the check that a stored argument can
//! be stored ([`JobArgument`]), and the conversion of the result ([`IntoJobResult`],
//! [`IntoJobError`]).

use std::ops::{Deref, DerefMut};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::job::{Cancellation, JobContext, JobError, StateType};

/// Application state given to the server with [`ServerBuilder::state`](crate::ServerBuilder::state),
/// as a parameter of a `#[job]` function.
///
/// The server clones the value for each run, so give it something cheap to clone (a pool, an
/// `Arc`). A server refuses to start when a registered job needs a state it was not given.
///
/// ```
/// use firelane::prelude::*;
///
/// #[derive(Clone)]
/// struct Mailer {
///     from: &'static str,
/// }
///
/// #[firelane::job]
/// async fn send_welcome_email(user_id: i64, State(mailer): State<Mailer>) {
///     println!("{} welcomes user {user_id}", mailer.from);
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), firelane::Error> {
/// let storage = firelane::sqlite(":memory:").await?;
/// let server = Server::builder(storage.clone())
///     .register(send_welcome_email)
///     .state(Mailer { from: "hello@example.com" })
///     .start()
///     .await?;
/// # server.shutdown().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State<T>(pub T);

impl<T> Deref for State<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for State<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

/// A value a running job takes from its [`JobContext`] instead of from its stored arguments.
///
/// A `#[job]` function's parameters of type [`State<T>`], [`JobContext`] and [`Cancellation`]
/// come from here. Implement it for a type of your own and mark the parameter `#[inject]`:
///
/// ```
/// use firelane::prelude::*;
/// use firelane::{FromContext, StateType};
///
/// /// The attempt number, as a parameter.
/// struct Attempt(u32);
///
/// impl FromContext for Attempt {
///     fn from_context(ctx: &JobContext) -> Result<Self, JobError> {
///         Ok(Attempt(ctx.attempt()))
///     }
/// }
///
/// #[firelane::job]
/// async fn flaky(#[inject] Attempt(attempt): Attempt) -> Result<(), JobError> {
///     if attempt < 3 {
///         return Err(JobError::retry("not yet"));
///     }
///     Ok(())
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be taken from a running job's context",
    note = "a job's injected parameters are `State<T>`, `JobContext`, `Cancellation`, or a type that implements `firelane::FromContext`"
)]
pub trait FromContext: Sized {
    /// Takes the value from the context; an error ends the attempt with it.
    fn from_context(ctx: &JobContext) -> Result<Self, JobError>;

    /// The application state it needs, which the server checks at start.
    fn required_state() -> Vec<StateType> {
        Vec::new()
    }
}

impl<T: Clone + Send + Sync + 'static> FromContext for State<T> {
    fn from_context(ctx: &JobContext) -> Result<Self, JobError> {
        ctx.state::<T>().map(State)
    }

    fn required_state() -> Vec<StateType> {
        vec![StateType::of::<T>()]
    }
}

impl FromContext for JobContext {
    fn from_context(ctx: &JobContext) -> Result<Self, JobError> {
        Ok(ctx.clone())
    }
}

impl FromContext for Cancellation {
    fn from_context(ctx: &JobContext) -> Result<Self, JobError> {
        Ok(ctx.cancellation().clone())
    }
}

/// A type a `#[job]` function can take as a stored argument: anything serde can write and read
/// back, owned, and `Send`.
///
/// There is nothing to implement: every such type is one.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a job argument: it is stored as JSON, and must implement `Serialize` and `Deserialize` and be `Send + 'static`",
    label = "this argument is stored with the job",
    note = "derive them with `#[derive(serde::Serialize, serde::Deserialize)]` on `{Self}`",
    note = "or, for a value that should not be stored (a connection, a client, a handle), store its id and load it inside the job, or take it as `State<T>`"
)]
pub trait JobArgument: Serialize + DeserializeOwned + Send + 'static {}

impl<T: Serialize + DeserializeOwned + Send + 'static> JobArgument for T {}

/// What a `#[job]` function may return: `()`, or `Result<(), E>` where `E` converts into a
/// [`JobError`] (`JobError` itself, or any error type, which then retries).
///
/// The error type is checked where the result is converted ([`IntoJobResult::into_job_result`]),
/// so that a function returning, say, `Result<(), String>` is told about `String`.
#[diagnostic::on_unimplemented(
    message = "a job cannot return `{Self}`",
    label = "a job returns `()` or `Result<(), E>`",
    note = "return `Result<(), JobError>`, or `Result<(), E>` where `E` implements `std::error::Error + Send + Sync + 'static`, or `()`"
)]
pub trait IntoJobResult: Sized {
    /// The error of a failed attempt, before it becomes a [`JobError`].
    type Error;

    /// The result, with its own error type.
    fn into_result(self) -> Result<(), Self::Error>;

    /// The attempt's outcome.
    fn into_job_result(self) -> Result<(), JobError>
    where
        Self::Error: IntoJobError,
    {
        self.into_result().map_err(IntoJobError::into_job_error)
    }
}

impl IntoJobResult for () {
    type Error = JobError;

    fn into_result(self) -> Result<(), JobError> {
        Ok(())
    }
}

impl<E> IntoJobResult for Result<(), E> {
    type Error = E;

    fn into_result(self) -> Result<(), E> {
        self
    }
}

/// An error type a `#[job]` function may fail with: [`JobError`], or anything that converts
/// into it (every `std::error::Error + Send + Sync + 'static`, which then retries).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a job's error: it must convert into `JobError`",
    label = "the job's error type",
    note = "return `JobError` (`JobError::retry(message)` retries, `JobError::fail(message)` does not), or an error type that implements `std::error::Error + Send + Sync + 'static`"
)]
pub trait IntoJobError {
    /// The [`JobError`] this error becomes.
    fn into_job_error(self) -> JobError;
}

impl<E: Into<JobError>> IntoJobError for E {
    fn into_job_error(self) -> JobError {
        self.into()
    }
}

/// How the `#[job]` expansion stores each argument (`serialize_with`/`deserialize_with`), so that
/// an argument that cannot be stored fails to compile with [`JobArgument`]'s message, at the
/// argument's type: both directions raise the one obligation `T: StoredArgument`, so each
/// missing trait is reported once.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a job argument: it is stored as JSON, and must implement `Serialize` and `Deserialize` and be `Send + 'static`",
    label = "this argument is stored with the job",
    note = "derive them with `#[derive(serde::Serialize, serde::Deserialize)]` on `{Self}`",
    note = "or, for a value that should not be stored (a connection, a client, a handle), store its id and load it inside the job, or take it as `State<T>`"
)]
pub trait StoredArgument: Sized {
    /// Writes the argument.
    fn serialize<S: serde::Serializer>(value: &Self, serializer: S) -> Result<S::Ok, S::Error>;

    /// Reads the argument back.
    fn deserialize<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error>;
}

impl<T: JobArgument> StoredArgument for T {
    fn serialize<S: serde::Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
        Serialize::serialize(value, serializer)
    }

    fn deserialize<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<T, D::Error> {
        T::deserialize(deserializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::JobId;

    #[derive(Clone, Debug, PartialEq)]
    struct Mailer(&'static str);

    #[test]
    fn results_convert_into_job_results() {
        assert!(().into_job_result().is_ok());
        assert!(Ok::<(), JobError>(()).into_job_result().is_ok());
        let io: Result<(), std::io::Error> = Err(std::io::Error::other("down"));
        assert!(matches!(io.into_job_result(), Err(JobError::Retry(_))));
        let fail: Result<(), JobError> = Err(JobError::fail("no"));
        assert!(matches!(fail.into_job_result(), Err(JobError::Fail(_))));
    }

    #[test]
    fn context_values_come_from_the_context() -> Result<(), JobError> {
        let ctx = JobContext::for_test(JobId::new(), 2);
        assert_eq!(JobContext::from_context(&ctx)?.attempt(), 2);
        assert!(!Cancellation::from_context(&ctx)?.is_cancelled());
        ctx.cancellation().cancel(crate::CancelReason::Shutdown);
        assert!(Cancellation::from_context(&ctx)?.is_cancelled());
        Ok(())
    }

    #[test]
    fn missing_state_fails_the_attempt_and_says_what_to_add() {
        let ctx = JobContext::for_test(JobId::new(), 1);
        match State::<Mailer>::from_context(&ctx) {
            Err(JobError::Fail(e)) => assert!(e.to_string().contains(".state(value)"), "{e}"),
            other => panic!("expected a failure, got {other:?}"),
        }
        assert_eq!(
            State::<Mailer>::required_state(),
            vec![StateType::of::<Mailer>()]
        );
        assert!(JobContext::required_state().is_empty());
    }

    #[test]
    fn state_derefs_to_its_value() {
        let mut state = State(Mailer("a"));
        assert_eq!(state.0, Mailer("a"));
        *state = Mailer("b");
        assert_eq!(*state, Mailer("b"));
    }
}
