//! The boot section's guest (benches/boot.py): `guest-disk DIR NAME` makes `DIR/NAME.raw`, the
//! tests' bootable disk (SYSLINUX, a Debian cloud kernel, a busybox initramfs; the parts
//! `scripts/setup.sh` fetches); `guest-disk --next N FILE` turns it into its Nth generation (a
//! new initramfs, 2 MiB of new data), which still boots.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [next, n, file] if next == "--next" => {
            let n: u32 = n.parse().unwrap_or_else(|_| usage());
            cairn_tests::boot::next_generation(std::path::Path::new(file), n);
        }
        [dir, name] => {
            let raw = cairn_tests::boot::bootable_disk(
                std::path::Path::new(dir),
                name,
                cairn_tests::boot::Guest::Boots,
            );
            println!("{}", raw.display());
        }
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!("usage: guest-disk DIR NAME | guest-disk --next N FILE");
    std::process::exit(2);
}
