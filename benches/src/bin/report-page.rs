//! Renders the report page of a made-up store, for the report benchmark (`benches/run.sh
//! --only report`): 100 VMs of 1000 points is out of reach of a benchmark run as real backups.
//!
//!     report-page VMS POINTS OUT
//!
//! Writes the page to OUT and prints `{"vms", "points", "seconds", "bytes"}`: the seconds of
//! the rendering alone (the document is made first).

use std::error::Error;
use std::time::Instant;

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, vms, points, out] = args.as_slice() else {
        return Err("usage: report-page VMS POINTS OUT".into());
    };
    let (vms, points): (usize, usize) = (vms.parse()?, points.parse()?);
    let doc = cairn_report::page::synthetic_document(vms, points);
    let started = Instant::now();
    let page = cairn_report::page::render(&doc, &cairn_report::page::PageOptions::default());
    let seconds = started.elapsed().as_secs_f64();
    std::fs::write(out, &page)?;
    println!(
        "{{\"vms\": {vms}, \"points\": {points}, \"seconds\": {seconds}, \"bytes\": {}}}",
        page.len()
    );
    Ok(())
}
