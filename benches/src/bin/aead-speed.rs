//! Measures the two AEADs issue 33 weighs for sealing chunks, on this machine: XChaCha20-Poly1305
//! (what `cairn-crypt` seals with) and AES-256-GCM, each over 256 KiB chunks (the default chunk
//! size), as MB/s of sealing and of opening, one core. Prints one JSON line.
//!
//!     aead-speed [MIB]

use std::error::Error;
use std::time::Instant;

use aes_gcm::Aes256Gcm;
use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};

const CHUNK: usize = 256 << 10;

fn main() -> Result<(), Box<dyn Error>> {
    let mib: usize = std::env::args().nth(1).map_or(Ok(512), |a| a.parse())?;
    let chunks = (mib << 20) / CHUNK;
    let data: Vec<u8> = (0..CHUNK).map(|i| (i * 7 + i / 4096) as u8).collect();
    let aad = [9u8; 32];
    let x = XChaCha20Poly1305::new(&[1u8; 32].into());
    let g = Aes256Gcm::new(&[1u8; 32].into());
    let xnonce = chacha20poly1305::XNonce::from_slice(&aad[..24]);
    let gnonce = aes_gcm::Nonce::from_slice(&aad[..12]);
    let mb = (chunks * CHUNK) as f64 / 1e6;
    let time = |f: &mut dyn FnMut() -> Result<(), Box<dyn Error>>| -> Result<f64, Box<dyn Error>> {
        let t = Instant::now();
        for _ in 0..chunks {
            f()?;
        }
        Ok(mb / t.elapsed().as_secs_f64())
    };
    let p = || Payload {
        msg: &data,
        aad: &aad,
    };
    let xs = x.encrypt(xnonce, p()).map_err(|_| "seal")?;
    let gs = g.encrypt(gnonce, p()).map_err(|_| "seal")?;
    let x_seal = time(&mut || x.encrypt(xnonce, p()).map(drop).map_err(|_| "seal".into()))?;
    let x_open = time(&mut || {
        x.decrypt(
            xnonce,
            Payload {
                msg: &xs,
                aad: &aad,
            },
        )
        .map(drop)
        .map_err(|_| "open".into())
    })?;
    let g_seal = time(&mut || g.encrypt(gnonce, p()).map(drop).map_err(|_| "seal".into()))?;
    let g_open = time(&mut || {
        g.decrypt(
            gnonce,
            Payload {
                msg: &gs,
                aad: &aad,
            },
        )
        .map(drop)
        .map_err(|_| "open".into())
    })?;
    let blake3 = time(&mut || {
        std::hint::black_box(blake3::hash(&data));
        Ok(())
    })?;
    println!(
        "{{\"mib\": {mib}, \"xchacha20poly1305_seal_mb_s\": {x_seal:.0}, \"xchacha20poly1305_open_mb_s\": {x_open:.0}, \"aes256gcm_seal_mb_s\": {g_seal:.0}, \"aes256gcm_open_mb_s\": {g_open:.0}, \"blake3_mb_s\": {blake3:.0}}}"
    );
    Ok(())
}
