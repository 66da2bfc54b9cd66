//! Fuzz target: any bytes a client sends (handshake, options, requests) must end the session
//! with a value or an error, never a panic or a hang. From `nbd/`:
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run server -- -max_total_time=60`.
#![no_main]

use cairn_nbd::replay::Replay;
use cairn_nbd::server::{self, Config, Device, DeviceError, Exports};
use cairn_nbd::{Extent, proto};
use libfuzzer_sys::fuzz_target;

struct Zeros;

impl Device for Zeros {
    fn size(&self) -> u64 {
        1 << 20
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read(&mut self, _: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        buf.fill(0);
        Ok(())
    }
    fn allocation(&mut self, _: u64, length: u32) -> Result<Vec<Extent>, DeviceError> {
        Ok(vec![Extent { length, flags: proto::STATE_ZERO }])
    }
    fn write(&mut self, _: u64, _: &[u8]) -> Result<(), DeviceError> {
        Ok(())
    }
}

struct One;

impl Exports for One {
    fn list(&self) -> Vec<(String, String)> {
        vec![("d".into(), String::new())]
    }
    fn find(&self, name: &str) -> Option<(String, String)> {
        (name == "d").then(|| ("d".into(), String::new()))
    }
    fn open(&self, _: &str) -> Result<Box<dyn Device>, String> {
        Ok(Box::new(Zeros))
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = server::serve(Box::new(Replay::new(data.to_vec())), &One, &Config::default(), &|_| {});
});
