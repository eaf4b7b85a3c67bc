//! `tokenrelay demo`.
use clap::Args;

use crate::{CmdResult, Failure};

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Run the scripted conversation once and exit.
    #[arg(long)]
    once: bool,
}

pub(crate) async fn run(a: DemoArgs) -> CmdResult {
    let _ = a.once;
    Err(Failure::runtime("not yet"))
}
