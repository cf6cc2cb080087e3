//! `shoal encrypt` and `shoal decrypt`: the format offline, no network.

use std::{
    fs::File,
    io::{BufWriter, Read, Write},
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context;
use shoal_node::seal::seal_file;
use shoal_protocol::{
    BlobId, Link,
    format::{Layout, Metadata, OpenBlobError, Opener, SEGMENT_LEN},
};

use crate::{cmd::KeyArgs, exit, ui};

/// Segments decrypted per parallel batch (2 MiB).
const BATCH: usize = 32;

/// Encrypt a file into a blob.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  shoal encrypt report.pdf -o report.blob           the blob (store it anywhere) and its link
  shoal encrypt report.pdf -o r.blob --convergent   same file, same blob (dedupes; see --help)")]
pub(crate) struct EncryptArgs {
    /// The file to encrypt.
    file: PathBuf,
    /// Where to write the ciphertext blob.
    #[arg(short, long, value_name = "BLOB")]
    output: PathBuf,
    /// Media type to record in the encrypted header.
    #[arg(long, default_value = "")]
    media_type: String,
    #[command(flatten)]
    key: KeyArgs,
    /// Replace the output if it exists.
    #[arg(long)]
    force: bool,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// Decrypt a blob with its link.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  shoal decrypt report.blob 'shoal:…#…' -o report.pdf   checks the blob against the link first")]
pub(crate) struct DecryptArgs {
    /// The ciphertext blob.
    blob: PathBuf,
    /// The blob's link (quote it).
    link: String,
    /// Where to write the file.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Replace the output if it exists.
    #[arg(long)]
    force: bool,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

fn refuse_existing(path: &Path, force: bool) -> anyhow::Result<()> {
    if path.exists() && !force {
        return Err(exit::coded(
            exit::LOCAL,
            format!(
                "{} already exists; choose another -o path or pass --force",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// A temporary file beside `target` (same filesystem, so the final rename is atomic), with
/// the permissions of an ordinary new file (tempfile's default is 0600).
fn temp_beside(target: &Path) -> anyhow::Result<tempfile::NamedTempFile> {
    let dir = target
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut b = tempfile::Builder::new();
    b.prefix(".shoal-tmp-");
    #[cfg(unix)]
    b.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
    b.tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))
}

pub(crate) fn encrypt(args: &EncryptArgs) -> anyhow::Result<ExitCode> {
    refuse_existing(&args.output, args.force)?;
    let md = std::fs::metadata(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let meta = Metadata {
        name: args
            .file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        file_len: md.len(),
        media_type: args.media_type.clone(),
    };
    let mode = args.key.mode();
    let tmp = temp_beside(&args.output)?;
    let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file());
    let bar = ui::bytes_bar(md.len(), "encrypting", args.json);
    let sealed = seal_file(
        &args.file,
        meta,
        &mode,
        ui::os_random(),
        Some(&mut w),
        &|n| bar.set_position(n),
    )?;
    w.flush().context("writing the blob")?;
    drop(w);
    tmp.as_file().sync_all().context("writing the blob")?;
    tmp.persist(&args.output)
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    bar.finish_and_clear();
    let mut link = Link::new(sealed.outboard.id(), sealed.key);
    link.blob_len = Some(sealed.outboard.blob_len());
    if args.json {
        let v = serde_json::json!({"link": link.to_secret_string(), "blob_id": link.id.to_string(), "blob": args.output, "blob_len": link.blob_len});
        ui::print_line(&v.to_string())?;
    } else {
        ui::warn_secret_link();
        ui::print_line(&link.to_secret_string())?;
        eprintln!(
            "wrote {} ({} bytes of ciphertext)",
            args.output.display(),
            sealed.outboard.blob_len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn decrypt(args: &DecryptArgs) -> anyhow::Result<ExitCode> {
    let link = Link::parse(&args.link).context("the link is malformed")?;
    refuse_existing(&args.output, args.force)?;
    let mut blob =
        File::open(&args.blob).with_context(|| format!("cannot read {}", args.blob.display()))?;
    let blob_len = blob.metadata().context("reading the blob")?.len();
    if let Some(expected) = link.blob_len
        && expected != blob_len
    {
        return Err(exit::coded(
            exit::INTEGRITY,
            format!(
                "{} is {blob_len} bytes but the link's blob is {expected} bytes: wrong file, or truncated",
                args.blob.display()
            ),
        ));
    }
    let layout = Layout::for_blob(blob_len).map_err(|e| {
        exit::coded(
            exit::INTEGRITY,
            format!(
                "{}: {e} (truncated or not a Shoal blob)",
                args.blob.display()
            ),
        )
    })?;
    let mut hasher = blake3::Hasher::new();
    let mut seg0 = vec![0u8; layout.segment_len(0)];
    blob.read_exact(&mut seg0).context("reading the blob")?;
    hasher.update(&seg0);
    let (opener, body) = Opener::new(&link.key, blob_len, &mut seg0).map_err(|e| match e {
        OpenBlobError::WrongKey => exit::coded(
            exit::INTEGRITY,
            "the link's key does not open this blob (wrong link, or a different blob)",
        ),
        other => exit::coded(
            exit::INTEGRITY,
            format!("the blob's header is invalid: {other}"),
        ),
    })?;
    let tmp = temp_beside(&args.output)?;
    let mut out = BufWriter::with_capacity(1 << 20, tmp.as_file());
    out.write_all(&seg0[body]).context("writing the output")?;
    let bar = ui::bytes_bar(blob_len, "decrypting", args.json);
    let segments = layout.segments();
    let mut bufs: Vec<Vec<u8>> = (0..BATCH)
        .map(|_| Vec::with_capacity(SEGMENT_LEN))
        .collect();
    let mut index = 1u64;
    while index < segments {
        let n = usize::try_from((segments - index).min(BATCH as u64)).expect("at most BATCH");
        for (i, b) in bufs.iter_mut().take(n).enumerate() {
            b.resize(layout.segment_len(index + i as u64), 0);
            blob.read_exact(b).context("reading the blob")?;
            hasher.update(b);
        }
        let opened: Vec<_> = {
            use rayon::prelude::*;
            bufs[..n]
                .par_iter_mut()
                .enumerate()
                .map(|(i, b)| opener.open_segment(index + i as u64, b))
                .collect()
        };
        for (b, r) in bufs.iter().zip(opened) {
            // Bytes are checked against the blob id below before the output is kept; a
            // failure here is either corruption (caught by the id) or a broken blob.
            let r =
                r.map_err(|e| exit::coded(exit::INTEGRITY, format!("{e}: the blob is corrupt")))?;
            out.write_all(&b[r]).context("writing the output")?;
        }
        index += n as u64;
        bar.set_position(index * SEGMENT_LEN as u64);
    }
    out.flush().context("writing the output")?;
    drop(out);
    let id = BlobId::from_bytes(*hasher.finalize().as_bytes());
    if id != link.id {
        return Err(exit::coded(
            exit::INTEGRITY,
            format!(
                "the blob's id is {id}, not the link's {}; output discarded",
                link.id
            ),
        ));
    }
    tmp.as_file().sync_all().context("writing the output")?;
    tmp.persist(&args.output)
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    bar.finish_and_clear();
    let meta = &opener.header().metadata;
    if args.json {
        let v = serde_json::json!({"path": args.output, "name": meta.name, "media_type": meta.media_type, "file_len": meta.file_len});
        ui::print_line(&v.to_string())?;
    } else {
        eprintln!(
            "decrypted {} ({}), original name {:?}",
            args.output.display(),
            ui::size(meta.file_len),
            meta.name
        );
    }
    Ok(ExitCode::SUCCESS)
}
