//! Hostile test plugin: allocates without bound until the host's memory cap stops it.

use busbar_plugin_sdk::{Action, Error, Event, Plugin, export};

struct Hog;

impl Plugin for Hog {
    fn handle(_event: &Event) -> Result<Vec<Action>, Error> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            let chunk = vec![0xA5u8; 1 << 20];
            hoard.push(std::hint::black_box(chunk));
        }
    }
}

export!(Hog);
