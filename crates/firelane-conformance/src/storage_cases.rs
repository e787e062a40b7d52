//! Storage-level cases (being written).
