//! Makes a store holding a fleet, for the fleet benchmark (`benches/run.sh --only fleet`):
//! 500 VMs of 20 points or 100 VMs of 1000 points are out of reach of a benchmark run as real
//! backups.
//!
//!     make-fleet STORE VMS POINTS
//!
//! Creates the store (64 KiB chunks) and gives each VM (`vm-0001`..., a UUID, one of four pools,
//! one of eight hosts) one disk of eight chunks and POINTS daily points, the newest today: each
//! point changes one chunk of the one before it, so every point's tree, data chunks and costs
//! are real and each backup adds one chunk. The points of a VM are one commit, through the
//! store's own commit path. Prints `{"vms", "points", "seconds"}`.

use std::error::Error;
use std::path::Path;
use std::time::Instant;

use cairn_store::{
    BackupStats, ChunkKind, ChunkRef, Labels, NewPoint, OpenMode, SourceInfo, SourceKind, Store,
    chunk,
};

/// Chunks of each VM's disk.
const CHUNKS: usize = 8;
/// The store's chunk size.
const CHUNK_SIZE: u32 = 64 << 10;

/// A chunk of data of its own for `seed`: a hash of the seed, then zeros (it compresses to a
/// few dozen bytes, so a fleet of 100 000 points stays small on disk).
fn data(seed: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; CHUNK_SIZE as usize];
    d[..32].copy_from_slice(blake3::hash(seed).as_bytes());
    d
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, root, vms, points] = args.as_slice() else {
        return Err("usage: make-fleet STORE VMS POINTS".into());
    };
    let (vms, points): (usize, usize) = (vms.parse()?, points.parse()?);
    let root = Path::new(root);
    Store::init(root, CHUNK_SIZE)?;
    let store = Store::open(root, OpenMode::Write { wait: false })?;
    let keys = store.keys()?.clone();
    let started = Instant::now();
    let today = chrono::Utc::now()
        .date_naive()
        .and_hms_opt(1, 0, 0)
        .ok_or("no 01:00 today")?
        .and_utc();
    let put = |session: &mut cairn_store::Session<'_>, seed: &[u8]| {
        let c = chunk::encode(&keys, &data(seed), ChunkKind::Data, 1)?;
        session.put(&c)?;
        Ok::<_, Box<dyn Error>>(ChunkRef::Data(c.id))
    };
    for v in 0..vms {
        let vm = format!("vm-{v:04}");
        let uuid = uuid_of(v);
        let mut session = store.session()?;
        let mut refs: Vec<ChunkRef> = (0..CHUNKS)
            .map(|i| put(&mut session, format!("{vm} base {i}").as_bytes()))
            .collect::<Result<_, _>>()?;
        let mut staged = Vec::with_capacity(points);
        for k in 0..points {
            refs[k % CHUNKS] = put(&mut session, format!("{vm} point {k}").as_bytes())?;
            let size = (CHUNKS as u64) * u64::from(CHUNK_SIZE);
            let point = NewPoint {
                vm: vm.clone(),
                disk: "xvda".into(),
                time: today - chrono::Duration::days((points - 1 - k) as i64),
                size,
                source: SourceInfo {
                    kind: SourceKind::Raw,
                    vhd_uuid: None,
                    path: format!("/fleet/{vm}.raw"),
                },
                parent: None,
                stats: BackupStats {
                    logical_bytes: size,
                    bytes_read: size,
                    chunks: CHUNKS as u64,
                    ..BackupStats::default()
                },
                run: None,
                labels: Labels {
                    vm_uuid: Some(uuid.clone()),
                    host: Some(format!("host-{}", v % 8)),
                    pool: Some(format!("pool-{}", v % 4)),
                    ..Labels::default()
                },
            };
            staged.push(session.stage(point, &refs)?);
        }
        session.commit_run(staged)?;
        if (v + 1) % 50 == 0 {
            eprintln!("{} VMs", v + 1);
        }
    }
    println!(
        "{{\"vms\": {vms}, \"points\": {}, \"seconds\": {}}}",
        vms * points,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A UUID of its own for VM number `v`.
fn uuid_of(v: usize) -> String {
    let h = blake3::hash(format!("fleet vm {v}").as_bytes());
    let b = h.as_bytes();
    format!(
        "{}-{}-{}-{}-{}",
        hex(&b[0..4]),
        hex(&b[4..6]),
        hex(&b[6..8]),
        hex(&b[8..10]),
        hex(&b[10..16])
    )
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
