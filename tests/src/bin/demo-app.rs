//! The demo's applications (`hello`, `world`), built inside this package so
//! that the interception tests can start them in their pods.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = xtask::apps::run(&args) {
        eprintln!("demo-app: {e}");
        std::process::exit(2);
    }
}
