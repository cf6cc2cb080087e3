//! `shoal id`: print this machine's peer id for a role (creating the identity if needed),
//! so operators can fill allow-lists before anything runs.

use std::{path::PathBuf, process::ExitCode};

use shoal_node::identity;

use crate::ui;

/// Which identity.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub(crate) enum Role {
    /// `share`, `get`, `seed`, `push`, `takedown` (DATA_DIR/identity.key).
    Node,
    /// `seed-node` (DATA_DIR/seed-node.key).
    SeedNode,
    /// `tracker` (DATA_DIR/tracker.key).
    Tracker,
}

/// Print a peer id.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  shoal id                        the id a seed node's operator allows with --allow
  shoal id --role seed-node       the id a tracker allows with --allow-seed-node")]
pub(crate) struct Args {
    /// Whose peer id.
    #[arg(long, value_enum, default_value = "node")]
    role: Role,
    /// Print `{"peer_id": …, "role": …}` on stdout.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: &Args, data_dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let data_dir = ui::data_dir(data_dir)?;
    let file = match args.role {
        Role::Node => identity::IDENTITY_FILE,
        Role::SeedNode => super::seed_node::IDENTITY_FILE,
        Role::Tracker => super::tracker::IDENTITY_FILE,
    };
    let keypair = identity::load_or_create_file(&data_dir, file)?;
    let peer_id = keypair.public().to_peer_id().to_string();
    if args.json {
        let role = match args.role {
            Role::Node => "node",
            Role::SeedNode => "seed-node",
            Role::Tracker => "tracker",
        };
        ui::print_line(&serde_json::json!({ "peer_id": peer_id, "role": role }).to_string())?;
    } else {
        ui::print_line(&peer_id)?;
    }
    Ok(ExitCode::SUCCESS)
}
