//! The smallest Tahoma guest: greets with its domain name and command line.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

use guest_sdk::{println, StartInfo};

guest_sdk::entry!(main);

fn main(si: &StartInfo) -> i32 {
    let (name, cmdline) = (si.name(), si.cmdline());
    println!("Hello from {name}! My command line is {cmdline:?}.");
    0
}
