//! The `llmlb` command line (filled in by the CLI issue).

fn main() {
    eprintln!("llmlb: the CLI is not built yet");
    std::process::exit(2);
}
