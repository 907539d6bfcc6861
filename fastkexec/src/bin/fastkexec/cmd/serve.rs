//! `fastkexec serve`: the histograms over HTTP for a scraper.

use anyhow::Result;

use crate::cli;
use crate::out::say;

pub fn run(args: cli::ServeArgs) -> Result<()> {
    use fastkexec::metrics::serve::{ServeOptions, Server, METRICS_PATH};
    let server = Server::bind(&ServeOptions {
        listen: args.listen,
        allow_remote: args.allow_remote,
        state_dir: args.state_dir,
    })?;
    // The real port (for --listen ...:0) on the first line, for scripts and tests.
    say!("listening on http://{}{METRICS_PATH}", server.local_addr());
    server.run()?;
    Ok(())
}
