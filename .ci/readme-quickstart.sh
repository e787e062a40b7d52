#!/usr/bin/env bash
# Copies the README's quickstart (its first ```rust block) into a fresh crate that depends on
# Firelane by path, and runs it as written.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src"
awk '/^```rust/{inside=1; next} inside && /^```/{exit} inside{print}' "$root/README.md" > "$work/src/main.rs"
test -s "$work/src/main.rs" || { echo "no rust block found in README.md" >&2; exit 1; }
cat > "$work/Cargo.toml" <<TOML
[package]
name = "readme-quickstart"
version = "0.0.0"
edition = "2024"
publish = false

[dependencies]
firelane = { path = "$root/crates/firelane" }
tokio = { version = "1", features = ["macros", "rt-multi-thread"] }

[workspace]
TOML
# Same dependency versions as the workspace, and its build cache.
cp "$root/Cargo.lock" "$work/Cargo.lock"
cd "$work"
CARGO_TARGET_DIR="$root/target/readme-quickstart" cargo run --quiet
