use firelane::prelude::*;

/// A live connection: not something to store with a job.
struct Connection;

#[firelane::job]
async fn sync_account(account_id: i64, connection: Connection) -> Result<(), JobError> {
    let _ = (account_id, connection);
    Ok(())
}

fn main() {}
