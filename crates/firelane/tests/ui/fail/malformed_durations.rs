#[firelane::job(timeout = "30")]
async fn no_unit() {}

#[firelane::job(retries = ["1s", "5 minutes"])]
async fn unknown_unit() {}

#[firelane::job(priority = "high")]
async fn priority_as_text() {}

fn main() {}
