use firelane::prelude::*;

#[firelane::job]
async fn generic<T>(value: T) {
    let _ = value;
}

#[firelane::job]
async fn borrowed(name: &str, ctx: &JobContext) {
    let _ = (name, ctx);
}

#[firelane::job]
async fn destructured((x, y): (i32, i32)) {
    let _ = (x, y);
}

#[firelane::job]
async fn anonymous(_: i32) {}

#[firelane::job]
async fn opaque(name: impl Into<String>) {
    let _ = name.into();
}

struct Mailer;

impl Mailer {
    #[firelane::job]
    async fn method(&self) {}
}

fn main() {}
