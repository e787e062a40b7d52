use firelane::prelude::*;

#[firelane::job]
async fn send_welcome_email(user_id: i64, name: String) {
    let _ = (user_id, name);
}

async fn enqueue(client: &Client) -> Result<(), firelane::Error> {
    client.enqueue(send_welcome_email::args("42", "Ada".into())).await?;
    client.enqueue(send_welcome_email::args(42)).await?;
    Ok(())
}

fn main() {
    let _ = enqueue;
}
