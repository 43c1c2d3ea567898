//! `cargo xtask`: the deploy tool. With no arguments it lists the tasks.

fn main() -> std::process::ExitCode {
    xtask::cli::main()
}
