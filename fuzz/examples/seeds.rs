//! Writes the seed corpus of both targets under `corpus/<target>/`
//! (existing files of the same name are replaced; others are kept), and the
//! reproducers of pending crashes under `crashes/<target>/`.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, seeds) in [
        ("frame_decode", courier_fuzz::seeds::frame_decode()),
        ("connection", courier_fuzz::seeds::connection()),
    ] {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        for (name, bytes) in &seeds {
            std::fs::write(dir.join(format!("seed_{name}")), bytes)?;
        }
        println!("{}: {} seeds", dir.display(), seeds.len());
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crashes/connection");
    std::fs::create_dir_all(&dir)?;
    for (name, bytes) in courier_fuzz::seeds::connection_crashes() {
        std::fs::write(dir.join(&name), bytes)?;
        println!("{}", dir.join(name).display());
    }
    Ok(())
}
