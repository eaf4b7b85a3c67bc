//! The `tokenrelay` command.
fn main() {}
