//! `tokenrelay serve` and `tokenrelay run`.
use clap::Args;

use crate::args::ProviderArgs;
use crate::{CmdResult, Failure};

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    provider: ProviderArgs,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    provider: ProviderArgs,
}

pub(crate) async fn serve(a: ServeArgs) -> CmdResult {
    let _ = a.provider;
    Err(Failure::runtime("not yet"))
}

pub(crate) async fn run(a: RunArgs) -> CmdResult {
    let _ = a.provider;
    Err(Failure::runtime("not yet"))
}
