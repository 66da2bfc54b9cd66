//! What an index rebuild reads from a bucket: every pack's frame list, the root files, the
//! tree chunks (into this machine's cache).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;

use super::read::{coalesce, encoded_range, in_flight};
use super::{FORGOTTEN_OBJECT, IN_FLIGHT, TreeCache, object_pack};
use crate::chunk::ChunkId;
use crate::error::{Error, Result};
use crate::index::Location;
use crate::objects::Objects;
use crate::pack::{self, FrameHeader, PackId, PackScan};

/// Every pack in the bucket with a frame list, each list fetched and decoded (several at a
/// time), and the objects of packs without one (a killed upload: no commit names them).
///
/// # Errors
/// The bucket's failures.
pub(crate) fn frame_lists(bucket: &dyn Objects) -> Result<(Vec<Result<PackScan>>, u64)> {
    let listed = bucket.list("packs/")?;
    let lists: Vec<String> = listed
        .iter()
        .filter(|o| o.name.ends_with(".frames"))
        .map(|o| o.name.clone())
        .collect();
    let with_list: HashSet<PackId> = lists.iter().filter_map(|n| object_pack(n)).collect();
    let unlisted = listed
        .iter()
        .filter(|o| o.name.ends_with(".pack"))
        .filter(|o| object_pack(&o.name).is_none_or(|p| !with_list.contains(&p)))
        .count() as u64;
    let got = fetch_all(bucket, &lists)?;
    let scans = lists
        .iter()
        .zip(got)
        .map(|(name, bytes)| {
            pack::decode_frame_list(&bytes).map_err(|what| Error::Objects {
                storage: bucket.describe(),
                name: name.clone(),
                what,
            })
        })
        .collect();
    Ok((scans, unlisted))
}

/// Fetches every object of `names`, several at a time, in order.
///
/// # Errors
/// The first failure.
pub(crate) fn fetch_all(bucket: &dyn Objects, names: &[String]) -> Result<Vec<Vec<u8>>> {
    let next = Mutex::new(0usize);
    let got: Mutex<Vec<Option<Result<Vec<u8>>>>> =
        Mutex::new((0..names.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..IN_FLIGHT.min(names.len()) {
            s.spawn(|| {
                loop {
                    let i = {
                        let Ok(mut n) = next.lock() else { break };
                        let i = *n;
                        *n += 1;
                        i
                    };
                    let Some(name) = names.get(i) else { break };
                    let r = bucket.get(name);
                    let failed = r.is_err();
                    if let Ok(mut g) = got.lock() {
                        g[i] = Some(r);
                    }
                    if failed {
                        break;
                    }
                }
            });
        }
    });
    got.into_inner()
        .map_err(|_| Error::Internal("a fetch panicked".into()))?
        .into_iter()
        .zip(names)
        .map(|(r, name)| {
            r.unwrap_or_else(|| {
                Err(Error::Objects {
                    storage: bucket.describe(),
                    name: name.clone(),
                    what: "not fetched: an earlier fetch failed".into(),
                })
            })
        })
        .collect()
}

/// Fills the tree cache of the store at `root` with the tree chunks `trees` (a rebuild from
/// the bucket: the recount after it walks every point's tree), adjacent frames in one GET and
/// several in flight. A frame whose CRCs or compression fail is left out (a walk reads it from
/// the bucket and names its damage); the cache checks each against its id when it is read.
///
/// # Errors
/// The bucket's failures.
pub(crate) fn prefetch_trees(
    bucket: &dyn Objects,
    root: &Path,
    mut trees: Vec<(ChunkId, Location)>,
) -> Result<()> {
    trees.sort_by_key(|(_, l)| (l.pack, l.offset));
    let cache = TreeCache::of(root);
    let jobs = trees.into_iter().map(|(id, l)| (0, id, l, ())).collect();
    for (_, chunk) in in_flight(coalesce(jobs), |r| encoded_range(None, bucket, r))? {
        if let Ok(c) = chunk {
            cache.put(&FrameHeader::of(&c), &c.bytes);
        }
    }
    Ok(())
}

/// Brings the bucket's root files and forgotten list into `root` (a rebuild from the bucket):
/// the bucket's are the truth, so a root file here that the bucket lacks is removed.
///
/// # Errors
/// I/O errors, the bucket's failures.
pub(crate) fn fetch_roots(bucket: &dyn Objects, root: &Path) -> Result<u64> {
    let names: Vec<String> = bucket
        .list("points/")?
        .into_iter()
        .map(|o| o.name)
        .filter(|n| n.ends_with(".json"))
        .collect();
    let got = fetch_all(bucket, &names)?;
    let keep: HashSet<std::path::PathBuf> = names.iter().map(|n| root.join(n)).collect();
    for old in crate::files::files_under(&root.join("points"), "json")? {
        if !keep.contains(&old) {
            std::fs::remove_file(&old).map_err(Error::io(&old, "removing a root file"))?;
        }
    }
    for (name, bytes) in names.iter().zip(got) {
        crate::files::write_atomic(&root.join(name), &bytes)?;
    }
    match bucket.get(FORGOTTEN_OBJECT) {
        Ok(bytes) => {
            crate::files::write_atomic(&root.join(crate::catalogue::FORGOTTEN_FILE), &bytes)?;
        }
        Err(Error::ObjectMissing { .. }) => {}
        Err(e) => return Err(e),
    }
    Ok(names.len() as u64)
}
