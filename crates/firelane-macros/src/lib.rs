//! The `#[job]` attribute of [Firelane](https://docs.rs/firelane): turns an `async fn` into a
//! background job with typed arguments.
//!
//! Use it through the `firelane` crate (`#[firelane::job]`, or `job` from
//! `firelane::prelude`), whose documentation has runnable examples; this crate only holds the
//! macro, and its expansion names `::firelane` paths.
//!
//! ```text
//! use firelane::prelude::*;
//!
//! #[firelane::job(queue = "emails", retries = 5)]
//! async fn send_welcome_email(
//!     user_id: i64,                      // stored with the job, as JSON
//!     name: String,                      // stored with the job, as JSON
//!     State(mailer): State<Mailer>,      // given to the server with `.state(mailer)`
//!     ctx: JobContext,                   // the running job: id, attempt, cancellation
//! ) -> Result<(), JobError> {
//!     mailer.send(user_id, &name).await?;
//!     Ok(())
//! }
//!
//! client.enqueue(send_welcome_email::args(42, "Ada".into())).await?;
//! Server::builder(storage).register(send_welcome_email).state(mailer).start().await?;
//! ```
//!
//! # What it writes
//!
//! For `async fn send_welcome_email(..)` above:
//!
//! ```text
//! #[derive(Clone, Copy, Debug, Default)]
//! pub struct send_welcome_email;                 // what `.register(..)` takes
//!
//! #[doc(hidden)]
//! #[derive(Serialize, Deserialize)]
//! pub struct __send_welcome_email_Args {         // stored as {"user_id":42,"name":"Ada"}
//!     pub user_id: i64,
//!     pub name: String,
//! }
//!
//! impl send_welcome_email {
//!     pub fn args(user_id: i64, name: String) -> firelane::JobRequest<Self> { .. }
//! }
//!
//! impl firelane::Job for send_welcome_email {
//!     const NAME: &'static str = "send_welcome_email";
//!     type Args = __send_welcome_email_Args;
//!     fn options() -> JobOptions { JobOptions::new().queue("emails").retries(5) }
//!     fn required_state() -> Vec<StateType> { /* Mailer */ }
//!     async fn run(&self, ctx: JobContext, args: Self::Args) -> Result<(), JobError> {
//!         /* takes the injected parameters from `ctx`, then runs the function's body */
//!     }
//! }
//! ```
//!
//! # Parameters
//!
//! A parameter is **injected** when its type's last path segment is `State`, `JobContext` or
//! `Cancellation`, or when it is marked `#[inject]` (for a type of yours that implements
//! `firelane::FromContext`). Injected parameters take any pattern: `State(mailer): State<Mailer>`.
//!
//! Every other parameter is **stored**: it needs a plain name (the field name in the stored
//! JSON) and an owned type implementing `Serialize` and `Deserialize`. `#[serde(..)]` on a
//! stored parameter goes to its field, for example `#[serde(default)]` on an argument added
//! after jobs were already enqueued without it.
//!
//! The function returns `()` or `Result<(), E>` where `E` converts into `firelane::JobError`.
//!
//! # Options
//!
//! | option | form | default |
//! | --- | --- | --- |
//! | `name` | `name = "welcome_email"`: the name stored with each job; keep it when the function is renamed or moved | the function's name |
//! | `queue` | `queue = "emails"`: 1 to 64 lowercase letters, digits, `_` and `-` | `"default"` |
//! | `priority` | `priority = 10`: an `i32`, higher runs sooner | 0 |
//! | `retries` | `retries = 5` (with the default back-off), or `retries = ["1s", "30s", "5m"]` (one delay per retry) | 10, Hangfire's back-off |
//! | `timeout` | `timeout = "30s"`: a whole number with a unit `ms`, `s`, `m`, `h` or `d`, or an integer of seconds | none |
//!
//! Each option is checked when the code compiles; every enqueue can still override them on
//! the request (`send_welcome_email::args(..).queue("urgent")`).

mod expand;
mod options;

use proc_macro::TokenStream;

/// Turns an `async fn` into a Firelane job. The `firelane_macros` crate documentation says what
/// it writes; `firelane::job` has runnable examples.
///
/// ```text
/// #[firelane::job(queue = "emails", retries = ["1s", "30s", "5m"], timeout = "2m")]
/// async fn send_welcome_email(user_id: i64, State(mailer): State<Mailer>) -> Result<(), JobError> {
///     mailer.send(user_id).await?;
///     Ok(())
/// }
/// ```
#[proc_macro_attribute]
pub fn job(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::job(attr.into(), item.into()).into()
}
