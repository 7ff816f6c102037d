//! The smallest Tahoma guest: greets with its domain name and command line.
#![no_std]
#![no_main]

use guest_sdk::{println, StartInfo};

guest_sdk::entry!(main);

fn main(si: &StartInfo) -> i32 {
    println!(
        "Hello from {} (domain {})! cmdline: {:?}",
        si.name(),
        si.domain_id,
        si.cmdline()
    );
    0
}
