//! Any bytes as a disk: its partition table and LVM metadata read, every volume's file system
//! opened, every folder listed and every file read (bounded), as `ls`, `find`, `cat` and
//! `mount` would. Whatever the bytes, an error is fine; a panic, a hang or unbounded memory is
//! a bug.
#![no_main]

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use cairn_files::{DiskFiles, DiskRead, EntryKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let disk: Arc<dyn DiskRead> = Arc::new(data.to_vec());
    let Ok(files) = DiskFiles::open(disk, "fuzz input") else {
        return;
    };
    for part in files.partitions() {
        let Ok(fs) = files.open_fs(part) else {
            continue;
        };
        let mut budget = 2000u32;
        let _ = cairn_files::find(&*fs, "/", &|_| true, &mut |path, e| {
            budget = budget.checked_sub(1).ok_or(cairn_files::Error::Path("budget".into()))?;
            let _ = fs.entry(path);
            if e.kind == EntryKind::File {
                let _ = fs.file_id(path);
                if let Ok(mut f) = fs.open_file(path) {
                    let mut buf = vec![0u8; 16 << 10];
                    for _ in 0..8 {
                        match f.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                    let _ = f.seek(SeekFrom::Start(1));
                    let _ = f.read(&mut buf);
                }
            }
            Ok(())
        });
    }
});
