//! Compile-time checks of `#[firelane::job]`: the forms that compile, and the mistakes that
//! must not, each with a message that says what to do (`tests/ui/fail/*.stderr`).
//!
//! After a deliberate change to a message, regenerate with `TRYBUILD=overwrite cargo test -p
//! firelane --test macro_ui`, then read the new `.stderr` files before committing them.
#![cfg(all(feature = "macros", feature = "sqlite"))]

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}
