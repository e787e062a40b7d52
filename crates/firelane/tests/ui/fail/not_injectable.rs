/// Not a `FromContext` type.
struct Clock;

#[firelane::job]
async fn tick(#[inject] clock: Clock) {
    let _ = clock;
}

fn main() {}
