//! Runnable examples of Firelane: see the `[[example]]` targets.
