#[firelane::job]
async fn send_welcome_email(user_id: i64) -> Result<(), String> {
    if user_id < 0 {
        return Err(format!("no user {user_id}"));
    }
    Ok(())
}

#[firelane::job]
async fn count_users() -> u64 {
    42
}

fn main() {}
