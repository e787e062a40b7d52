#[firelane::job(queue = "Bad Queue")]
async fn send_welcome_email(user_id: i64) {
    let _ = user_id;
}

fn main() {}
