use firelane::prelude::*;

#[firelane::job]
fn send_welcome_email(user_id: i64) -> Result<(), JobError> {
    let _ = user_id;
    Ok(())
}

fn main() {}
