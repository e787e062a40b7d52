use std::rc::Rc;

#[firelane::job]
async fn count(user_id: i64) {
    let shared = Rc::new(user_id);
    tokio::task::yield_now().await;
    let _ = shared;
}

fn main() {}
