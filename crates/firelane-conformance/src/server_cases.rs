//! Server-level cases (being written).
