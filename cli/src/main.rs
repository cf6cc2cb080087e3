//! `shoal`: share files end-to-end encrypted, fetch them from peers, and try it all with
//! `shoal demo`. This binary is the only place that reads flags, env, stdout and exit codes.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc malloc: per-block 64 KiB buffers made glibc return and re-fault
/// pages constantly (page faults were a visible share of a transfer's CPU; see
/// docs/benchmarks.md for the before/after).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cmd;
mod exit;
mod ui;

const AFTER_HELP: &str = "\
Examples:
  shoal demo                                 try it: a seed node and 8 peers share a file here
  shoal share movie.mkv                      print a link and serve the file until Ctrl-C
  shoal get 'shoal:…#…' -o movie.mkv          fetch, verify, decrypt (run again to resume)
  shoal get --seed 'shoal:…#…'               fetch, then keep serving it to others
  shoal seed --up-limit 1MiB                 serve everything shared or kept here
  shoal encrypt report.pdf -o report.blob    write the ciphertext, print its link
  shoal decrypt report.blob 'shoal:…#…' -o report.pdf
  shoal inspect 'shoal:…#…'                  show blob id, size and hints (never the key)
  shoal tracker                              run a tracker; prints its address for tr= hints
  shoal takedown BLOB_ID --reason TEXT --tracker ADDR
                                             stop a tracker you operate from coordinating a blob
  shoal get --bootstrap /ip4/…/p2p/… 'shoal:…#…'
                                             find peers in the Shoal DHT (no tracker needed);
                                             share and seed take --bootstrap too, or set
                                             SHOAL_BOOTSTRAP=ADDR,ADDR

Exit codes: 0 ok, 1 other error, 2 usage, 3 bad link, 4 no peer could deliver,
5 integrity (wrong key, data does not match the blob id), 6 local file error
(disk full, output exists, unreadable input), 7 the file was taken down at a tracker,
8 refused by a remote operator (a seed node's quota or allow-list, a tracker's operators).";

/// Peer-assisted, end-to-end encrypted file distribution.
///
/// A link holds the key after '#': anyone with the link can read the file; peers and
/// servers that carry it see only ciphertext.
#[derive(Parser, Debug)]
#[command(name = "shoal", version, about, after_help = AFTER_HELP)]
struct Cli {
    /// Where the node (and tracker) keep their identity and shares [default: the platform
    /// data dir].
    #[arg(long, global = true, env = "SHOAL_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// More log output on stderr (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Encrypt a file, print its link, and serve it to peers until Ctrl-C.
    Share(cmd::share::Args),
    /// Download a link's file from peers, verifying and decrypting as it goes.
    Get(cmd::get::Args),
    /// Encrypt a file into a ciphertext blob and print its link (offline).
    Encrypt(cmd::crypt::EncryptArgs),
    /// Decrypt a ciphertext blob with its link (offline).
    Decrypt(cmd::crypt::DecryptArgs),
    /// Show what a link names: blob id, size and hints. Never prints the key.
    Inspect(cmd::inspect::Args),
    /// Seed everything this machine remembers (and given links) to other peers until Ctrl-C.
    Seed(cmd::seed::Args),
    /// Run a tracker, a seed node and home peers in one process; show what the swarm saves.
    Demo(cmd::demo::Args),
    /// Run a tracker: peers announce the swarms they are in and learn about each other.
    Tracker(cmd::tracker::Args),
    /// Run a seed node: store ciphertext pushed by allowed publishers and serve it to swarms.
    SeedNode(cmd::seed_node::Args),
    /// Send a shared blob's ciphertext to seed nodes (the key stays here).
    Push(cmd::push::Args),
    /// Print this machine's peer id (for allow-lists).
    Id(cmd::id::Args),
    /// Take a blob down at a tracker you operate (or --list a tracker's takedowns).
    Takedown(cmd::takedown::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    ui::init_logging(cli.verbose);
    let result = match cli.command {
        Command::Share(a) => cmd::share::run(&a, cli.data_dir),
        Command::Get(a) => cmd::get::run(&a, cli.data_dir),
        Command::Encrypt(a) => cmd::crypt::encrypt(&a),
        Command::Decrypt(a) => cmd::crypt::decrypt(&a),
        Command::Inspect(a) => cmd::inspect::run(&a),
        Command::Seed(a) => cmd::seed::run(&a, cli.data_dir),
        Command::Demo(a) => cmd::demo::run(&a),
        Command::Tracker(a) => cmd::tracker::run(&a, cli.data_dir),
        Command::SeedNode(a) => cmd::seed_node::run(&a, cli.data_dir),
        Command::Push(a) => cmd::push::run(&a, cli.data_dir),
        Command::Id(a) => cmd::id::run(&a, cli.data_dir),
        Command::Takedown(a) => cmd::takedown::run(&a, cli.data_dir),
    };
    match result {
        Ok(code) => code,
        Err(e) => exit::report(&e),
    }
}
