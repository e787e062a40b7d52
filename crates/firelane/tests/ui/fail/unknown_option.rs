#[firelane::job(queue = "emails", retry = 5)]
async fn send_welcome_email(user_id: i64) {
    let _ = user_id;
}

fn main() {
    // The job still expands with no options, so its uses report nothing more.
    let _ = send_welcome_email::args(42);
}
